"""Photometric ops: pixels only, annotations unchanged.

On uint8 images every per-value function (brightness, contrast, gamma, the
hue rotation on OpenCV's HSV, ...) becomes a 256-entry lookup table applied
by ``cv2.LUT``: one table read per pixel however complex the function. Float
images (values in [0, 1]) go through the same functions directly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import cv2
import numpy as np

from simulacra_services.augmentation.engine.params import Bool, Float, FloatList, Int, Range, invalid
from simulacra_services.augmentation.engine.registry import ImageOp, register, uniform

_LEVELS = np.arange(256, dtype=np.float64) / 255.0


def lut(image: np.ndarray, function: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Apply ``function`` ([0, 1] -> [0, 1], vectorized) to every value of the image."""
    if image.dtype == np.uint8:
        table = np.clip(np.rint(function(_LEVELS) * 255.0), 0, 255).astype(np.uint8)
        return _apply_table(image, table)
    return np.clip(function(image.astype(np.float32)), 0.0, 1.0).astype(np.float32)


def _apply_table(image: np.ndarray, table: np.ndarray) -> np.ndarray:
    if image.ndim == 3 and image.shape[2] > 4:
        return table[image]
    out = cv2.LUT(image, table)
    return out.reshape(image.shape)


def to_unit(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)


def from_unit(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype == np.uint8:
        return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)
    return np.clip(values, 0.0, 1.0).astype(np.float32)


def gray(image: np.ndarray) -> np.ndarray:
    """Luma (ITU-R 601, as OpenCV and torchvision) as [H, W], same dtype."""
    if image.shape[2] == 1:
        return image[:, :, 0]
    return cv2.cvtColor(np.ascontiguousarray(image[:, :, :3]), cv2.COLOR_RGB2GRAY)


def _mean_gray(image: np.ndarray) -> float:
    value = float(gray(image).mean())
    return value / 255.0 if image.dtype == np.uint8 else value


def _saturate(image: np.ndarray, factor: float) -> np.ndarray:
    if image.shape[2] < 3 or factor == 1.0:
        return image
    g = gray(image)[:, :, None]
    rgb = image[:, :, :3]
    if image.dtype == np.uint8:
        blended = cv2.addWeighted(rgb, factor, np.repeat(g, 3, axis=2), 1.0 - factor, 0.0)
    else:
        blended = np.clip(g + factor * (rgb - g), 0.0, 1.0).astype(np.float32)
    if image.shape[2] == 3:
        return blended
    return np.concatenate([blended, image[:, :, 3:]], axis=2)


def shift_hsv(image: np.ndarray, hue_degrees: float, saturation: float, value: float) -> np.ndarray:
    """Rotate hue by degrees; add saturation and value shifts (fractions of full scale)."""
    if image.shape[2] < 3:
        return lut(image, lambda x: x + value) if value else image
    rgb = np.ascontiguousarray(image[:, :, :3])
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    h, s, v = cv2.split(hsv)
    if image.dtype == np.uint8:
        if hue_degrees:
            h = cv2.LUT(h, ((np.arange(256) + round(hue_degrees / 2.0)) % 180).astype(np.uint8))
        if saturation:
            s = cv2.LUT(s, np.clip(np.arange(256) + round(saturation * 255), 0, 255).astype(np.uint8))
        if value:
            v = cv2.LUT(v, np.clip(np.arange(256) + round(value * 255), 0, 255).astype(np.uint8))
    else:
        h = np.mod(h + hue_degrees, 360.0)
        s = np.clip(s + saturation, 0.0, 1.0)
        v = np.clip(v + value, 0.0, 1.0)
    out = cv2.cvtColor(cv2.merge([h, s, v]), cv2.COLOR_HSV2RGB)
    return out if image.shape[2] == 3 else np.concatenate([out, image[:, :, 3:]], axis=2)


@register
class BrightnessContrast(ImageOp):
    """x * contrast + brightness (brightness as a fraction of full scale), as Albumentations'
    RandomBrightnessContrast with brightness_by_max."""

    name = "brightness_contrast"
    params = {"brightness": Range((0.0, 0.0), -1.0, 1.0), "contrast": Range((1.0, 1.0), 0.0, 10.0)}

    def sample(self, values, rng, height, width):
        return uniform(rng, values["brightness"]), uniform(rng, values["contrast"])

    def apply(self, image, values, sampled):
        beta, alpha = sampled
        return lut(image, lambda x: x * alpha + beta)


@register
class Gamma(ImageOp):
    name = "gamma"
    params = {"gamma": Range((1.0, 1.0), 0.0, 10.0, open_lo=True)}

    def sample(self, values, rng, height, width):
        return uniform(rng, values["gamma"])

    def apply(self, image, values, sampled):
        return lut(image, lambda x: np.power(np.clip(x, 0.0, 1.0), sampled))


@register
class HueSaturationValue(ImageOp):
    name = "hue_saturation_value"
    params = {
        "hue_shift_degrees": Range((0.0, 0.0), -180.0, 180.0),
        "saturation_shift": Range((0.0, 0.0), -1.0, 1.0),
        "value_shift": Range((0.0, 0.0), -1.0, 1.0),
    }

    def sample(self, values, rng, height, width):
        return tuple(uniform(rng, values[k]) for k in ("hue_shift_degrees", "saturation_shift", "value_shift"))

    def apply(self, image, values, sampled):
        return shift_hsv(image, *sampled)


_LUMA = np.array([0.299, 0.587, 0.114])
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_INV = np.linalg.inv(_YIQ)


def hue_matrix(turns: float) -> np.ndarray:
    """Hue rotation by ``turns`` as a 3x3 RGB matrix (a rotation of the chroma plane in YIQ)."""
    a = -2.0 * math.pi * turns
    rotation = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(a), -math.sin(a)], [0.0, math.sin(a), math.cos(a)]])
    return _YIQ_INV @ rotation @ _YIQ


def apply_colour_matrix(image: np.ndarray, matrix: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """x' = matrix @ x + offset per pixel (offset in [0, 1] units), in one pass, clipped once."""
    if image.dtype == np.uint8:
        affine = np.hstack([matrix, (offset * 255.0)[:, None]])
        return cv2.transform(image, affine).reshape(image.shape)
    out = cv2.transform(image, np.hstack([matrix, offset[:, None]])).reshape(image.shape)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def colour_transform(sampled: tuple, means: np.ndarray, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """ColorJitter's draws as one affine colour map (matrix, offset in [0, 1] units), given the
    image's channel means in [0, 1]: 3x3 for colour, 1x1 (brightness and contrast) for grey."""
    order, (brightness, contrast, saturation, hue) = sampled
    if channels < 3:
        gain, offset = 1.0, 0.0
        for step in order:
            if step == 0:
                gain, offset = gain * brightness, offset * brightness
            elif step == 1:
                mean = gain * float(means[0]) + offset
                gain, offset = gain * contrast, offset * contrast + (1.0 - contrast) * mean
        return np.array([[gain]]), np.array([offset])
    matrix, offset = np.eye(3), np.zeros(3)
    for step in order:
        if step == 0:
            matrix, offset = matrix * brightness, offset * brightness
        elif step == 1:
            mean = float(_LUMA @ (matrix @ means[:3] + offset))
            matrix, offset = matrix * contrast, offset * contrast + (1.0 - contrast) * mean
        elif step == 2:
            mix = saturation * np.eye(3) + (1.0 - saturation) * np.outer(np.ones(3), _LUMA)
            matrix, offset = mix @ matrix, mix @ offset
        elif hue:
            turn = hue_matrix(hue)
            matrix, offset = turn @ matrix, turn @ offset
    return matrix, offset


@register
class ColorJitter(ImageOp):
    """torchvision's ColorJitter factors (brightness, contrast, saturation, hue) in a random order,
    composed into one affine colour transform and applied in one pass (StyleGAN2-ADA's colour
    matrix): values are clipped once at the end instead of after each step, and the hue turns
    the chroma plane of YIQ instead of going through HSV."""

    name = "color_jitter"
    params = {
        "brightness": Range((1.0, 1.0), 0.0, 10.0),
        "contrast": Range((1.0, 1.0), 0.0, 10.0),
        "saturation": Range((1.0, 1.0), 0.0, 10.0),
        "hue": Range((0.0, 0.0), -0.5, 0.5),
    }

    def sample(self, values, rng, height, width):
        order = tuple(int(i) for i in rng.permutation(4))
        return order, tuple(uniform(rng, values[k]) for k in ("brightness", "contrast", "saturation", "hue"))

    def apply(self, image, values, sampled):
        channels = image.shape[2]
        scale = 255.0 if image.dtype == np.uint8 else 1.0
        means = np.array(cv2.mean(image)[:channels]) / scale
        matrix, offset = colour_transform(sampled, means, channels)
        if channels < 3:
            gain, shift = float(matrix[0, 0]), float(offset[0])
            return lut(image, lambda x: x * gain + shift)
        if channels == 3:
            return apply_colour_matrix(image, matrix, offset)
        rgb = apply_colour_matrix(np.ascontiguousarray(image[:, :, :3]), matrix, offset)
        return np.concatenate([rgb, image[:, :, 3:]], axis=2)


@register
class Grayscale(ImageOp):
    """Luma in every channel (the channel count is kept)."""

    name = "grayscale"

    def apply(self, image, values, sampled):
        if image.shape[2] == 1:
            return image
        g = gray(image)[:, :, None]
        out = np.repeat(g, 3, axis=2)
        return out if image.shape[2] == 3 else np.concatenate([out, image[:, :, 3:]], axis=2)


def _kernel_size(sigma: float, size: int) -> int:
    return size if size else int(2 * math.ceil(3.0 * sigma) + 1)


@register
class GaussianBlur(ImageOp):
    name = "gaussian_blur"
    params = {"sigma": Range((1.0, 1.0), 0.0, 100.0, open_lo=True), "kernel_size": Int(0, 0, 255, odd_or_zero=True)}

    def sample(self, values, rng, height, width):
        return uniform(rng, values["sigma"])

    def apply(self, image, values, sampled):
        k = _kernel_size(sampled, values["kernel_size"])
        return cv2.GaussianBlur(image, (k, k), sigmaX=sampled, sigmaY=sampled, borderType=cv2.BORDER_REFLECT_101).reshape(image.shape)


@register
class MotionBlur(ImageOp):
    """A line kernel of ``kernel_size`` pixels at a random angle (camera or object motion)."""

    name = "motion_blur"
    params = {"kernel_size": Int(7, 3, 255, odd_or_zero=True), "angle_degrees": Range((0.0, 360.0), -360.0, 360.0)}

    def sample(self, values, rng, height, width):
        return uniform(rng, values["angle_degrees"])

    def apply(self, image, values, sampled):
        k = values["kernel_size"]
        kernel = np.zeros((k, k), dtype=np.float32)
        c = k // 2
        a = math.radians(sampled)
        dx, dy = math.cos(a) * c, -math.sin(a) * c
        cv2.line(kernel, (round(c - dx), round(c - dy)), (round(c + dx), round(c + dy)), 1.0, 1)
        kernel /= kernel.sum()
        return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT_101).reshape(image.shape)


@register
class GaussianNoise(ImageOp):
    """Adds N(mean, std) noise in the [0, 1] intensity scale."""

    name = "gaussian_noise"
    params = {"std": Range((0.02, 0.02), 0.0, 1.0), "mean": Float(0.0, -1.0, 1.0), "per_channel": Bool(True)}

    def sample(self, values, rng, height, width):
        return uniform(rng, values["std"]), int(rng.integers(0, 2**63))

    def apply(self, image, values, sampled):
        std, noise_seed = sampled
        channels = image.shape[2] if values["per_channel"] else 1
        noise_rng = np.random.Generator(np.random.Philox(key=noise_seed))
        noise = noise_rng.standard_normal((image.shape[0], image.shape[1], channels), dtype=np.float32)
        noise = noise * np.float32(std) + np.float32(values["mean"])
        if image.dtype == np.uint8:
            return np.clip(image.astype(np.float32) + noise * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.clip(image + noise, 0.0, 1.0).astype(np.float32)


@register
class Jpeg(ImageOp):
    """JPEG compression artefacts at a random quality."""

    name = "jpeg"
    params = {"quality": Range((50.0, 90.0), 1.0, 100.0)}

    def sample(self, values, rng, height, width):
        return int(round(uniform(rng, values["quality"])))

    def apply(self, image, values, sampled):
        dtype = image.dtype
        pixels = image if dtype == np.uint8 else from_unit(image, np.dtype(np.uint8))
        colour = pixels.shape[2] >= 3
        src = cv2.cvtColor(np.ascontiguousarray(pixels[:, :, :3]), cv2.COLOR_RGB2BGR) if colour else pixels[:, :, 0]
        ok, encoded = cv2.imencode(".jpg", src, [cv2.IMWRITE_JPEG_QUALITY, sampled])
        assert ok
        decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR if colour else cv2.IMREAD_GRAYSCALE)
        if colour:
            out = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
            if pixels.shape[2] > 3:
                out = np.concatenate([out, pixels[:, :, 3:]], axis=2)
        else:
            out = decoded[:, :, None]
        return out if dtype == np.uint8 else to_unit(out)


@register
class Cutout(ImageOp):
    """Random erasing: ``count`` rectangles filled with ``fill_value``; annotations stay."""

    name = "cutout"
    params = {
        "count": Int(1, 1, 64),
        "height_fraction": Range((0.1, 0.1), 0.0, 1.0),
        "width_fraction": Range((0.1, 0.1), 0.0, 1.0),
        "fill_value": Float(0.0, 0.0, 255.0),
    }

    def sample(self, values, rng, height, width):
        boxes = []
        for _ in range(values["count"]):
            h = max(1, int(round(uniform(rng, values["height_fraction"]) * height)))
            w = max(1, int(round(uniform(rng, values["width_fraction"]) * width)))
            y = int(rng.integers(0, max(height - h, 0) + 1))
            x = int(rng.integers(0, max(width - w, 0) + 1))
            boxes.append((x, y, w, h))
        return boxes

    def apply(self, image, values, sampled):
        out = image.copy()
        fill = values["fill_value"] if image.dtype == np.uint8 else values["fill_value"] / 255.0 if values["fill_value"] > 1 else values["fill_value"]
        for x, y, w, h in sampled:
            out[y : y + h, x : x + w] = fill
        return out


@register
class Normalize(ImageOp):
    """(x / max_pixel_value - mean) / std per channel; float32 out. For the stream, not for stored items."""

    name = "normalize"
    params = {
        "mean": FloatList(-10.0, 10.0),
        "std": FloatList(0.0, 100.0, open_lo=True),
        "max_pixel_value": Float(0.0, 0.0, 65535.0),
    }

    def check(self, values: Mapping[str, Any], field: str) -> None:
        if len(values["mean"]) != len(values["std"]):
            raise invalid("PARAM_OUT_OF_RANGE", f"{field}.std", f"{len(values['std'])} std values for {len(values['mean'])} means", count=len(values["std"]))

    def apply(self, image, values, sampled):
        channels = image.shape[2]
        mean = np.asarray(values["mean"] or (0.0,) * channels, dtype=np.float32)
        std = np.asarray(values["std"] or (1.0,) * channels, dtype=np.float32)
        if len(mean) not in (1, channels):
            raise invalid("CHANNEL_COUNT_MISMATCH", "normalize.mean", f"{len(mean)} values for an image of {channels} channels", channels=channels)
        scale = values["max_pixel_value"] or (255.0 if image.dtype == np.uint8 else 1.0)
        return ((image.astype(np.float32) / np.float32(scale) - mean) / std).astype(np.float32)
