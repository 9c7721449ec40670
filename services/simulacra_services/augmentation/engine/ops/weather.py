"""Edge-case ops: fog, rain, snow, night, shadow, sun flare.

They synthesize conditions that are rare in collected data. Each draws its
layout (streak positions, shadow polygons, flare centre) from the op's own
random stream and composes it with the image in float32, once.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from simulacra_services.augmentation.engine.ops.photometric import from_unit, to_unit
from simulacra_services.augmentation.engine.params import Float, Int, Range
from simulacra_services.augmentation.engine.registry import ImageOp, register, uniform

MAX_STREAKS = 100_000
"""Rain streaks and snow flakes drawn per image at most, whatever the density and the image size."""


@register
class Fog(ImageOp):
    """Haze denser towards the top of the frame (farther away in a road scene)."""

    name = "fog"
    params = {"density": Range((0.3, 0.3), 0.0, 1.0), "brightness": Float(0.8, 0.0, 1.0)}

    def sample(self, values, rng, height, width):
        return uniform(rng, values["density"])

    def apply(self, image, values, sampled):
        h = image.shape[0]
        depth = 1.0 - (np.arange(h, dtype=np.float32) + 0.5) / h  # 1 at the top, 0 at the bottom
        alpha = (np.float32(sampled) * (0.35 + 0.65 * depth))[:, None, None]
        x = to_unit(image)
        hazy = x * (1.0 - alpha) + np.float32(values["brightness"]) * alpha
        return from_unit(cv2.GaussianBlur(hazy, (3, 3), 0).reshape(x.shape) if sampled > 0.5 else hazy, image.dtype)


@register
class Rain(ImageOp):
    name = "rain"
    params = {
        "drop_density": Range((20.0, 20.0), 0.0, 1000.0),
        "drop_length": Range((0.05, 0.05), 0.0, 1.0),
        "slant_degrees": Range((0.0, 0.0), -60.0, 60.0),
        "brightness": Float(0.8, 0.0, 1.0),
    }

    def sample(self, values, rng, height, width):
        count = min(MAX_STREAKS, int(uniform(rng, values["drop_density"]) * height * width / 10_000))
        length = max(1.0, uniform(rng, values["drop_length"]) * height)
        slant = math.radians(uniform(rng, values["slant_degrees"]))
        starts = rng.uniform((0.0, -length), (width, height), size=(count, 2))
        return starts, length, slant

    def apply(self, image, values, sampled):
        starts, length, slant = sampled
        h, w = image.shape[:2]
        streaks = np.zeros((h, w), dtype=np.uint8)
        dx, dy = math.sin(slant) * length, math.cos(slant) * length
        for x, y in starts:
            cv2.line(streaks, (int(x), int(y)), (int(x + dx), int(y + dy)), 255, 1)
        x = to_unit(image) * np.float32(values["brightness"])
        x = cv2.blur(x, (3, 3)).reshape(x.shape)
        layer = (streaks.astype(np.float32) / 255.0 * 0.6)[:, :, None]
        return from_unit(x * (1.0 - layer) + 0.8 * layer, image.dtype)


@register
class Snow(ImageOp):
    """Brightens the brighter parts of the scene (snow cover) and scatters flakes."""

    name = "snow"
    params = {"coverage": Range((0.2, 0.4), 0.0, 1.0), "flake_density": Range((30.0, 30.0), 0.0, 1000.0)}

    def sample(self, values, rng, height, width):
        coverage = uniform(rng, values["coverage"])
        count = min(MAX_STREAKS, int(uniform(rng, values["flake_density"]) * height * width / 10_000))
        flakes = rng.uniform((0.0, 0.0, 0.5), (width, height, 2.0), size=(count, 3))
        return coverage, flakes

    def apply(self, image, values, sampled):
        coverage, flakes = sampled
        x = to_unit(image)
        luma = x.mean(axis=2, keepdims=True)
        threshold = np.float32(1.0 - coverage)
        weight = np.clip((luma - threshold * 0.6) / max(1e-3, 1.0 - threshold * 0.6), 0.0, 1.0) * np.float32(coverage)
        x = x * (1.0 - weight) + weight
        layer = np.zeros(image.shape[:2], dtype=np.uint8)
        for fx, fy, radius in flakes:
            cv2.circle(layer, (int(fx), int(fy)), int(round(radius)), 255, -1)
        alpha = (layer.astype(np.float32) / 255.0 * 0.9)[:, :, None]
        return from_unit(x * (1.0 - alpha) + alpha, image.dtype)


@register
class Night(ImageOp):
    """Darker, bluer, noisier: low light with sensor noise."""

    name = "night"
    params = {"darkness": Range((0.5, 0.5), 0.0, 1.0), "blue_shift": Range((0.3, 0.3), 0.0, 1.0), "noise_std": Range((0.02, 0.02), 0.0, 1.0)}

    def sample(self, values, rng, height, width):
        return uniform(rng, values["darkness"]), uniform(rng, values["blue_shift"]), uniform(rng, values["noise_std"]), int(rng.integers(0, 2**63))

    def apply(self, image, values, sampled):
        darkness, blue, std, noise_seed = sampled
        x = to_unit(image)
        gain = np.float32(1.0 - darkness)
        if x.shape[2] >= 3:
            gains = np.array([1.0 - 0.5 * blue, 1.0 - 0.25 * blue, 1.0] + [1.0] * (x.shape[2] - 3), dtype=np.float32) * gain
        else:
            gains = np.full(x.shape[2], gain, dtype=np.float32)
        x = np.power(x, np.float32(1.0 + 0.5 * darkness)) * gains
        if std > 0:
            noise = np.random.Generator(np.random.Philox(key=noise_seed)).standard_normal(x.shape[:2] + (1,), dtype=np.float32)
            x = x + noise * np.float32(std)
        return from_unit(x, image.dtype)


@register
class Shadow(ImageOp):
    """Darkens ``count`` random quadrilaterals (cast shadows)."""

    name = "shadow"
    params = {"count": Int(1, 1, 16), "darkness": Range((0.5, 0.5), 0.0, 1.0)}

    def sample(self, values, rng, height, width):
        polygons = []
        for _ in range(values["count"]):
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            size = rng.uniform(0.15, 0.5) * min(height, width)
            angles = np.sort(rng.uniform(0, 2 * math.pi, size=4))
            radii = rng.uniform(0.5, 1.0, size=4) * size
            polygons.append(np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1).astype(np.int32))
        return uniform(rng, values["darkness"]), polygons

    def apply(self, image, values, sampled):
        darkness, polygons = sampled
        mask = np.zeros(image.shape[:2], dtype=np.uint8)
        cv2.fillPoly(mask, polygons, 1)
        factor = np.where(mask[:, :, None] > 0, np.float32(1.0 - darkness), np.float32(1.0))
        return from_unit(to_unit(image) * factor, image.dtype)


@register
class SunFlare(ImageOp):
    """A bright radial glow with a random centre in the upper half of the frame."""

    name = "sun_flare"
    params = {"radius": Range((0.1, 0.25), 0.0, 2.0), "intensity": Range((0.5, 0.8), 0.0, 1.0)}

    def sample(self, values, rng, height, width):
        return rng.uniform(0, width), rng.uniform(0, height / 2), uniform(rng, values["radius"]) * max(height, width), uniform(rng, values["intensity"])

    def apply(self, image, values, sampled):
        cx, cy, radius, intensity = sampled
        h, w = image.shape[:2]
        ys = ((np.arange(h, dtype=np.float32) + 0.5 - cy) ** 2)[:, None]
        xs = ((np.arange(w, dtype=np.float32) + 0.5 - cx) ** 2)[None, :]
        glow = (np.float32(intensity) * np.exp(-(xs + ys) / np.float32(max(radius, 1.0) ** 2)))[:, :, None]
        x = to_unit(image)
        return from_unit(x + (1.0 - x) * glow, image.dtype)
