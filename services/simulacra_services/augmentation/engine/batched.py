"""The batched torch path (``device="cpu"`` or ``"cuda"``), for streams that feed training on a GPU.

Planning stays on the CPU and is the same as the numpy path's: ``Augmenter.run``
walks the pipeline with a recording pixel backend, so every draw, every fused
matrix and every annotation is exactly the numpy path's. Only the pixels move
to torch: items whose plans have the same shape (input size, then the same
sequence of resamplings and pixel ops with the same output sizes) run together,
one ``grid_sample`` per resampling for the whole batch and one batched op per
pixel op. Items that use what the torch path lacks (elastic fields, mixing,
the weather ops, blurs, JPEG, HSV) run on the numpy path, item by item.

Tolerance against the numpy path (tests/augmentation/test_batched.py): torch
samples with float weights where OpenCV uses 1/32-pixel fixed point, so
bilinear results differ by a few levels on some pixels (max 3, mean under 0.5
of 255); nearest-neighbour and pure pixel ops agree to one level.

torch is imported by this module only: the service imports it when a stream
asks for a device.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from simulacra_services.augmentation.engine.ops.photometric import colour_transform
from simulacra_services.augmentation.engine.pipeline import Augmented, Augmenter, Item, NumpyPixels
from simulacra_services.augmentation.engine.registry import ImageOp
from simulacra_services.augmentation.engine.warp import Resampling, _maps_inside

TORCH_OPS = ("color_jitter", "brightness_contrast", "gamma", "grayscale", "normalize", "gaussian_noise", "cutout")
_MODES = {"INTERPOLATION_NEAREST": "nearest", "INTERPOLATION_BILINEAR": "bilinear", "INTERPOLATION_BICUBIC": "bicubic"}
_PADDING = {"BORDER_MODE_CONSTANT": "zeros", "BORDER_MODE_REFLECT": "reflection", "BORDER_MODE_REPLICATE": "border"}
_LUMA = (0.299, 0.587, 0.114)


@dataclasses.dataclass(frozen=True)
class Planned:
    """A stand-in for pixels while a plan is recorded: only the shape and dtype are known."""

    shape: tuple[int, ...]
    dtype: np.dtype


class Recorder(NumpyPixels):
    """Records the pixel work of one item instead of doing it."""

    def __init__(self) -> None:
        self.segments: list[tuple] = []

    def warp(self, image, matrix, height, width, resampling):  # noqa: ANN001, ANN201
        self.segments.append(("warp", matrix.copy(), height, width, resampling, image.shape[:2]))
        return Planned((height, width) + tuple(image.shape[2:]), np.dtype(image.dtype))

    def remap(self, image, field, values):  # noqa: ANN001, ANN201
        raise NotImplementedError("elastic fields run on the numpy path")

    def apply(self, image, op: ImageOp, values: Mapping[str, Any], sampled: Any):  # noqa: ANN201
        if op.name not in TORCH_OPS:
            raise NotImplementedError(f"{op.name} runs on the numpy path")
        self.segments.append(("op", op.name, values, sampled))
        return Planned(tuple(image.shape), np.dtype(np.float32) if op.name == "normalize" else np.dtype(image.dtype))

    def mixing(self) -> bool:
        return False


def _signature(item: Item, segments: Sequence[tuple]) -> tuple:
    parts: list[Any] = [item.image.shape, str(item.image.dtype)]
    for segment in segments:
        if segment[0] == "warp":
            _, _, height, width, resampling, _ = segment
            parts.append(("warp", height, width, resampling.interpolation, resampling.border_mode, resampling.fill_value))
        else:
            parts.append(("op", segment[1]))
    return tuple(parts)


class TorchAugmenter:
    """Runs an ``Augmenter``'s pipeline on batches with torch on ``device``."""

    def __init__(self, augmenter: Augmenter, device: str = "cpu") -> None:
        self.augmenter = augmenter
        self.device = torch.device(device)

    def run_batch(self, items: Sequence[Item], seeds: Sequence[int], paths: Sequence[str] | None = None) -> list[Augmented]:
        paths = paths or [f"items[{i}]" for i in range(len(items))]
        results: list[Augmented | None] = [None] * len(items)
        groups: dict[tuple, list[tuple[int, Augmented, list]]] = defaultdict(list)
        for index, (item, seed, path) in enumerate(zip(items, seeds, paths)):
            recorder = Recorder()
            try:
                planned = self.augmenter.run(item, seed, path, pixels=recorder)
            except NotImplementedError:
                results[index] = self.augmenter.run(item, seed, path)
                continue
            groups[_signature(item, recorder.segments)].append((index, planned, recorder.segments))
        for members in groups.values():
            images = self._execute([items[i] for i, _, _ in members], [s for _, _, s in members])
            for (index, planned, _), image in zip(members, images):
                results[index] = dataclasses.replace(planned, image=image)
        return [r for r in results if r is not None]

    # -- execution ---------------------------------------------------------------------

    def _execute(self, items: Sequence[Item], plans: Sequence[list]) -> list[np.ndarray]:
        first = items[0].image
        integer = first.dtype == np.uint8
        scale = 255.0 if integer else 1.0
        batch = torch.from_numpy(np.stack([i.image for i in items])).to(self.device).permute(0, 3, 1, 2).float()
        normalized = False
        for step in range(len(plans[0])):
            segments = [plan[step] for plan in plans]
            if segments[0][0] == "warp":
                batch = self._warp(batch, segments)
            else:
                batch = self._op(batch, segments, scale)
                if segments[0][1] == "normalize":
                    integer, normalized, scale = False, True, 1.0
                    continue
            # Round and clip where the numpy path does: uint8 after every step, floats after pixel ops.
            if integer:
                batch = batch.round().clamp_(0, 255)
            elif segments[0][0] == "op" and not normalized:
                batch = batch.clamp_(0.0, 1.0)
        out = batch.permute(0, 2, 3, 1).cpu().numpy()
        if integer:
            return [np.ascontiguousarray(image.astype(np.uint8)) for image in out]
        return [np.ascontiguousarray(image.astype(np.float32)) for image in out]

    def _warp(self, batch: torch.Tensor, segments: Sequence[tuple]) -> torch.Tensor:
        _, _, height, width, resampling, (in_h, in_w) = segments[0]
        assert isinstance(resampling, Resampling)
        mode = _MODES[resampling.interpolation or "INTERPOLATION_BILINEAR"]
        inverse = torch.tensor(np.stack([np.linalg.inv(s[1]) for s in segments]), dtype=torch.float64, device=self.device)
        ys, xs = torch.meshgrid(
            torch.arange(height, dtype=torch.float64, device=self.device) + 0.5,
            torch.arange(width, dtype=torch.float64, device=self.device) + 0.5,
            indexing="ij",
        )
        points = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).reshape(1, -1, 3)
        source = points @ inverse.transpose(1, 2)
        source = source[..., :2] / source[..., 2:3]
        grid = torch.stack([source[..., 0] / in_w * 2 - 1, source[..., 1] / in_h * 2 - 1], dim=-1)
        grid = grid.reshape(len(segments), height, width, 2).float()
        inside = [_maps_inside(s[1], in_h, in_w, height, width) is not None for s in segments]
        out = torch.empty((batch.shape[0], batch.shape[1], height, width), device=self.device)
        for padding_inside in (True, False):
            chosen = [i for i, flag in enumerate(inside) if flag == padding_inside]
            if not chosen:
                continue
            index = torch.tensor(chosen, device=self.device)
            padding = "border" if padding_inside else _PADDING[resampling.border_mode]
            sampled = F.grid_sample(batch[index], grid[index], mode=mode, padding_mode=padding, align_corners=False)
            if padding == "zeros" and resampling.fill_value:
                coverage = F.grid_sample(torch.ones_like(batch[index][:, :1]), grid[index], mode=mode, padding_mode="zeros", align_corners=False)
                sampled = sampled + resampling.fill_value * (1.0 - coverage)
            out[index] = sampled
        return out

    def _op(self, batch: torch.Tensor, segments: Sequence[tuple], scale: float) -> torch.Tensor:
        name = segments[0][1]
        channels = batch.shape[1]
        if name == "color_jitter":
            means = (batch.mean(dim=(2, 3)) / scale).cpu().numpy().astype(np.float64)
            maps = [colour_transform(s[3], m, channels) for s, m in zip(segments, means)]
            n = min(channels, 3)
            matrix = torch.tensor(np.stack([m for m, _ in maps]), dtype=torch.float32, device=self.device)
            offset = torch.tensor(np.stack([o for _, o in maps]), dtype=torch.float32, device=self.device) * scale
            colour = torch.einsum("bij,bjhw->bihw", matrix, batch[:, :n]) + offset[:, :, None, None]
            return torch.cat([colour, batch[:, n:]], dim=1) if channels > n else colour
        if name == "brightness_contrast":
            beta = torch.tensor([s[3][0] for s in segments], device=self.device)[:, None, None, None] * scale
            alpha = torch.tensor([s[3][1] for s in segments], device=self.device)[:, None, None, None]
            return batch * alpha + beta
        if name == "gamma":
            gamma = torch.tensor([s[3] for s in segments], device=self.device)[:, None, None, None]
            return (batch / scale).clamp(0, 1).pow(gamma) * scale
        if name == "grayscale":
            if channels == 1:
                return batch
            weights = torch.tensor(_LUMA, device=self.device)[None, :, None, None]
            grey = (batch[:, :3] * weights).sum(dim=1, keepdim=True)
            return torch.cat([grey.expand(-1, 3, -1, -1), batch[:, 3:]], dim=1)
        if name == "normalize":
            values = segments[0][2]
            mean = torch.tensor(values["mean"] or (0.0,) * channels, device=self.device)[None, :, None, None]
            std = torch.tensor(values["std"] or (1.0,) * channels, device=self.device)[None, :, None, None]
            maximum = values["max_pixel_value"] or scale
            return (batch / maximum - mean) / std
        if name == "gaussian_noise":
            values = segments[0][2]
            planes = channels if values["per_channel"] else 1
            noise = []
            for segment in segments:
                std, seed = segment[3]
                generator = np.random.Generator(np.random.Philox(key=seed))
                sample = generator.standard_normal((batch.shape[2], batch.shape[3], planes), dtype=np.float32) * np.float32(std) + np.float32(values["mean"])
                noise.append(sample)
            tensor = torch.from_numpy(np.stack(noise)).to(self.device).permute(0, 3, 1, 2)
            return batch + tensor * scale
        if name == "cutout":
            out = batch.clone()
            for index, segment in enumerate(segments):
                fill = segment[2]["fill_value"] if scale == 255.0 else min(segment[2]["fill_value"], 1.0)
                for x, y, w, h in segment[3]:
                    out[index, :, y : y + h, x : x + w] = fill
            return out
        raise AssertionError(name)
