"""Geometric ops: each returns a 3x3 matrix (input -> output pixel coordinates) and an output size.

Conventions follow Albumentations/OpenCV: a positive rotation angle turns the
image counter-clockwise on screen, rotations and affine maps pivot on the
image centre, translations are fractions of the image size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from simulacra_services.augmentation.engine.params import Bool, Float, Int, Range, border_mode, interpolation, invalid
from simulacra_services.augmentation.engine.registry import FieldOp, GeometricOp, Warp, register, uniform


def translation(tx: float, ty: float) -> np.ndarray:
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def scaling(sx: float, sy: float) -> np.ndarray:
    return np.array([[sx, 0.0, 0.0], [0.0, sy, 0.0], [0.0, 0.0, 1.0]])


def rotation(degrees: float) -> np.ndarray:
    """Counter-clockwise on screen (y down), as cv2.getRotationMatrix2D."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])


def about_centre(matrix: np.ndarray, height: int, width: int) -> np.ndarray:
    cx, cy = width / 2.0, height / 2.0
    return translation(cx, cy) @ matrix @ translation(-cx, -cy)


def _geometry(values: Mapping[str, Any], matrix: np.ndarray, height: int, width: int) -> Warp:
    return Warp(
        matrix=matrix,
        height=height,
        width=width,
        interpolation=values.get("interpolation"),  # type: ignore[arg-type]
        border_mode=values.get("border_mode"),  # type: ignore[arg-type]
        fill_value=values.get("fill_value"),  # type: ignore[arg-type]
    )


@register
class HorizontalFlip(GeometricOp):
    name = "horizontal_flip"

    def warp(self, values, sampled, height, width):
        return _geometry(values, np.array([[-1.0, 0.0, width], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), height, width)


@register
class VerticalFlip(GeometricOp):
    name = "vertical_flip"

    def warp(self, values, sampled, height, width):
        return _geometry(values, np.array([[1.0, 0.0, 0.0], [0.0, -1.0, height], [0.0, 0.0, 1.0]]), height, width)


@register
class Transpose(GeometricOp):
    """Swaps rows and columns (the main-diagonal mirror)."""

    name = "transpose"

    def warp(self, values, sampled, height, width):
        return _geometry(values, np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), width, height)


@register
class Rotate(GeometricOp):
    name = "rotate"
    params = {
        "angle_degrees": Range((0.0, 0.0), -360.0, 360.0),
        "interpolation": interpolation(),
        "border_mode": border_mode(),
        "fill_value": Float(0.0, 0.0, 255.0),
    }

    def sample(self, values, rng, height, width):
        return uniform(rng, values["angle_degrees"])

    def warp(self, values, sampled, height, width):
        return _geometry(values, about_centre(rotation(sampled), height, width), height, width)


@register
class Affine(GeometricOp):
    """translate . shear . rotate . scale about the image centre, in one matrix (Albumentations' order)."""

    name = "affine"
    params = {
        "scale": Range((1.0, 1.0), 0.0, 100.0, open_lo=True),
        "translate_x": Range((0.0, 0.0), -1.0, 1.0),
        "translate_y": Range((0.0, 0.0), -1.0, 1.0),
        "rotate_degrees": Range((0.0, 0.0), -360.0, 360.0),
        "shear_x_degrees": Range((0.0, 0.0), -80.0, 80.0),
        "shear_y_degrees": Range((0.0, 0.0), -80.0, 80.0),
        "interpolation": interpolation(),
        "border_mode": border_mode(),
        "fill_value": Float(0.0, 0.0, 255.0),
    }

    def sample(self, values, rng, height, width):
        names = ("scale", "translate_x", "translate_y", "rotate_degrees", "shear_x_degrees", "shear_y_degrees")
        return tuple(uniform(rng, values[name]) for name in names)

    def warp(self, values, sampled, height, width):
        scale, tx, ty, angle, shear_x, shear_y = sampled
        # Albumentations' convention: a positive shear_x leans vertical lines to the left going down.
        shear = np.array(
            [[1.0, -math.tan(math.radians(shear_x)), 0.0], [-math.tan(math.radians(shear_y)), 1.0, 0.0], [0.0, 0.0, 1.0]]
        )
        linear = shear @ rotation(angle) @ scaling(scale, scale)
        matrix = translation(tx * width, ty * height) @ about_centre(linear, height, width)
        return _geometry(values, matrix, height, width)


@register
class Perspective(GeometricOp):
    """Moves each corner by up to ``scale`` of the image size, towards or away from the centre."""

    name = "perspective"
    params = {
        "scale": Range((0.05, 0.1), 0.0, 0.5),
        "interpolation": interpolation(),
        "border_mode": border_mode(),
        "fill_value": Float(0.0, 0.0, 255.0),
    }

    def sample(self, values, rng, height, width):
        strength = uniform(rng, values["scale"])
        return rng.uniform(-strength, strength, size=(4, 2))

    def warp(self, values, sampled, height, width):
        import cv2

        src = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float64)
        dst = src + sampled * np.array([width, height])
        matrix = cv2.getPerspectiveTransform(src.astype(np.float32), dst.astype(np.float32)).astype(np.float64)
        return _geometry(values, matrix / matrix[2, 2], height, width)


def _crop_resize(x: float, y: float, w: float, h: float, out_h: int, out_w: int) -> np.ndarray:
    return scaling(out_w / w, out_h / h) @ translation(-x, -y)


@register
class RandomResizedCrop(GeometricOp):
    """torchvision's recipe: up to 10 draws of (area, log-ratio), then a centred fallback."""

    name = "random_resized_crop"
    params = {
        "height": Int(None, 1, 16384),
        "width": Int(None, 1, 16384),
        "scale": Range((0.08, 1.0), 0.0, 1.0, open_lo=True),
        "ratio": Range((0.75, 4.0 / 3.0), 0.0, 100.0, open_lo=True),
        "interpolation": interpolation(),
    }

    def sample(self, values, rng, height, width):
        area = height * width
        log_ratio = (math.log(values["ratio"][0]), math.log(values["ratio"][1]))
        for _ in range(10):
            target = area * uniform(rng, values["scale"])
            aspect = math.exp(uniform(rng, log_ratio))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                x = int(rng.integers(0, width - w + 1))
                y = int(rng.integers(0, height - h + 1))
                return (x, y, w, h)
        in_ratio = width / height
        if in_ratio < values["ratio"][0]:
            w, h = width, int(round(width / values["ratio"][0]))
        elif in_ratio > values["ratio"][1]:
            h, w = height, int(round(height * values["ratio"][1]))
        else:
            w, h = width, height
        return ((width - w) // 2, (height - h) // 2, max(w, 1), max(h, 1))

    def warp(self, values, sampled, height, width):
        x, y, w, h = sampled
        return _geometry(values, _crop_resize(x, y, w, h, values["height"], values["width"]), values["height"], values["width"])


def _check_fits(op: str, h: int, w: int, height: int, width: int, x: int = 0, y: int = 0) -> None:
    if x + w > width or y + h > height:
        raise invalid(
            "CROP_OUT_OF_IMAGE",
            f"{op}",
            f"a {w}x{h} crop at ({x}, {y}) does not fit the {width}x{height} image",
            width=width,
            height=height,
        )


@register
class Crop(GeometricOp):
    name = "crop"
    params = {"x": Int(0, 0, 16384), "y": Int(0, 0, 16384), "width": Int(None, 1, 16384), "height": Int(None, 1, 16384)}

    def warp(self, values, sampled, height, width):
        _check_fits(self.name, values["height"], values["width"], height, width, values["x"], values["y"])
        return _geometry(values, translation(-values["x"], -values["y"]), values["height"], values["width"])


@register
class RandomCrop(GeometricOp):
    name = "random_crop"
    params = {"width": Int(None, 1, 16384), "height": Int(None, 1, 16384)}

    def sample(self, values, rng, height, width):
        _check_fits(self.name, values["height"], values["width"], height, width)
        return (int(rng.integers(0, width - values["width"] + 1)), int(rng.integers(0, height - values["height"] + 1)))

    def warp(self, values, sampled, height, width):
        x, y = sampled
        return _geometry(values, translation(-x, -y), values["height"], values["width"])


@register
class CenterCrop(GeometricOp):
    name = "center_crop"
    params = {"width": Int(None, 1, 16384), "height": Int(None, 1, 16384)}

    def warp(self, values, sampled, height, width):
        _check_fits(self.name, values["height"], values["width"], height, width)
        x, y = (width - values["width"]) // 2, (height - values["height"]) // 2
        return _geometry(values, translation(-x, -y), values["height"], values["width"])


@register
class Pad(GeometricOp):
    name = "pad"
    params = {
        "top": Int(0, 0, 16384),
        "bottom": Int(0, 0, 16384),
        "left": Int(0, 0, 16384),
        "right": Int(0, 0, 16384),
        "border_mode": border_mode(),
        "fill_value": Float(0.0, 0.0, 255.0),
    }

    def warp(self, values, sampled, height, width):
        return _geometry(
            values,
            translation(values["left"], values["top"]),
            height + values["top"] + values["bottom"],
            width + values["left"] + values["right"],
        )


@register
class Resize(GeometricOp):
    name = "resize"
    params = {
        "height": Int(None, 1, 16384),
        "width": Int(None, 1, 16384),
        "interpolation": interpolation(),
        "keep_aspect_ratio": Bool(False),
        "fill_value": Float(0.0, 0.0, 255.0),
    }

    def warp(self, values, sampled, height, width):
        out_h, out_w = values["height"], values["width"]
        if not values["keep_aspect_ratio"]:
            return _geometry(values, scaling(out_w / width, out_h / height), out_h, out_w)
        s = min(out_h / height, out_w / width)
        offset = translation((out_w - width * s) / 2.0, (out_h - height * s) / 2.0)
        return _geometry(values, offset @ scaling(s, s), out_h, out_w)


@register
class Elastic(FieldOp):
    """Elastic distortion (Simard et al.): uniform noise smoothed by a Gaussian of ``sigma`` pixels,
    scaled by ``alpha`` pixels, as Albumentations' ElasticTransform. Annotations follow the field."""

    name = "elastic"
    params = {
        "alpha": Range((30.0, 30.0), 0.0, 1000.0),
        "sigma": Range((5.0, 5.0), 0.0, 100.0, open_lo=True),
        "interpolation": interpolation(),
        "border_mode": border_mode(),
        "fill_value": Float(0.0, 0.0, 255.0),
    }

    def sample(self, values, rng, height, width):
        return uniform(rng, values["alpha"]), uniform(rng, values["sigma"]), int(rng.integers(0, 2**63))

    def field(self, values, sampled, height, width):
        import cv2

        from simulacra_services.augmentation.engine.field import Field

        alpha, sigma, noise_seed = sampled
        noise = np.random.Generator(np.random.Philox(key=noise_seed)).uniform(-1.0, 1.0, size=(2, height, width)).astype(np.float32)
        k = int(2 * math.ceil(3.0 * sigma) + 1)
        dx = cv2.GaussianBlur(noise[0], (k, k), sigma, borderType=cv2.BORDER_REFLECT_101) * np.float32(alpha)
        dy = cv2.GaussianBlur(noise[1], (k, k), sigma, borderType=cv2.BORDER_REFLECT_101) * np.float32(alpha)
        return Field(dx, dy)
