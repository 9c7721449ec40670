"""PNG pictures without a plotting library: sample grids, loss curves, the report summary."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageDraw

PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def grid_image(samples: torch.Tensor, rows: int, scale: int = 2, pad: int = 2) -> Image.Image:
    """Samples [rows*cols, C, H, W] in [-1, 1], row-major, as one RGB picture."""
    n, c, h, w = samples.shape
    cols = max(1, -(-n // rows))
    pixels = ((samples.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, cols)
        tile = pixels[i].transpose(1, 2, 0)
        tile = np.repeat(tile, 3, axis=2) if c == 1 else tile[:, :, :3]
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        canvas[y : y + h, x : x + w] = tile
    image = Image.fromarray(canvas)
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def grid_png(samples: torch.Tensor, rows: int) -> bytes:
    return _png(grid_image(samples, rows))


def loss_curve_png(history: list[dict], keys: tuple[str, ...] | None = None, size: tuple[int, int] = (640, 360)) -> bytes:
    """One line per loss (each scaled to its own min..max), with a legend; x is the step."""
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 50, width - 10, 30, height - 30
    draw.rectangle((left, top, right, bottom), outline=(0, 0, 0))
    if history:
        keys = keys or tuple(k for k in history[0] if k != "step")
        steps = np.array([h["step"] for h in history], dtype=np.float64)
        span = max(steps[-1] - steps[0], 1.0)
        for index, key in enumerate(keys):
            values = np.array([h.get(key, np.nan) for h in history], dtype=np.float64)
            finite = np.isfinite(values)
            if not finite.any():
                continue
            low, high = values[finite].min(), values[finite].max()
            scaled = (values - low) / (high - low if high > low else 1.0)
            points = [
                (left + (s - steps[0]) / span * (right - left), bottom - v * (bottom - top))
                for s, v, ok in zip(steps, scaled, finite) if ok
            ]
            colour = PALETTE[index % len(PALETTE)]
            if len(points) > 1:
                draw.line(points, fill=colour, width=2)
            draw.text((left + 5 + 110 * index, 8), f"{key} [{low:.3g}, {high:.3g}]", fill=colour)
        draw.text((left, bottom + 8), f"step {int(steps[0])}", fill=(0, 0, 0))
        draw.text((right - 80, bottom + 8), f"step {int(steps[-1])}", fill=(0, 0, 0))
    return _png(image)


def _lines(report: dict) -> list[str]:
    f, p, u = report.get("fidelity", {}), report.get("privacy", {}), report.get("utility")
    lines = [
        f"Frechet distance {f.get('frechet_distance', float('nan')):.3f}  (real vs real {f.get('frechet_distance_real_baseline', float('nan')):.3f})",
        f"KID {f.get('kid', float('nan')):.4f}  precision {f.get('precision', float('nan')):.3f}  recall {f.get('recall', float('nan')):.3f}",
        f"density {f.get('density', float('nan')):.3f}  coverage {f.get('coverage', float('nan')):.3f}  C2ST {f.get('c2st_accuracy', float('nan')):.3f}",
    ]
    if u:
        lines.append(f"TSTR {u['tstr_accuracy']:.3f}  TRTR {u['trtr_accuracy']:.3f}  label fidelity {f.get('label_fidelity', float('nan')):.3f}")
    lines.append(
        f"memorization {p.get('memorization_rate', float('nan')):.3f}  DCR ratio {p.get('dcr_ratio', float('nan')):.3f}  MIA AUC {p.get('membership_inference_auc', float('nan')):.3f}"
    )
    return lines


def report_png(report: dict, samples: torch.Tensor, rows: int) -> bytes:
    """The summary picture stored with a model version: a sample grid over the key figures."""
    grid = grid_image(samples, rows)
    lines = _lines(report)
    image = Image.new("RGB", (max(grid.width, 520), grid.height + 16 * len(lines) + 12), "white")
    image.paste(grid, (0, 0))
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((6, grid.height + 6 + 16 * i), line, fill=(0, 0, 0))
    return _png(image)
