"""Albumentations pipelines (``albumentations.to_dict`` / ``save(..., data_format="json")``) in our JSON form.

Pure dict manipulation: Albumentations itself is never imported. Transforms
without an equivalent op are refused with a ValueError naming them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["from_albumentations"]

# ---------------------------------------------------------------------------

_INTERPOLATION = {0: "INTERPOLATION_NEAREST", 1: "INTERPOLATION_BILINEAR", 2: "INTERPOLATION_BICUBIC"}
_BORDER = {0: "BORDER_MODE_CONSTANT", 1: "BORDER_MODE_REPLICATE", 4: "BORDER_MODE_REFLECT", 2: "BORDER_MODE_REFLECT"}


def _range(value: Any, offset: float = 0.0, scale: float = 1.0) -> dict[str, float]:
    low, high = (value, value) if isinstance(value, (int, float)) else value
    return {"min": float(low) * scale + offset, "max": float(high) * scale + offset}


def _axis(value: Any, axis: str) -> Any:
    return value[axis] if isinstance(value, Mapping) else value


def _albumentation(t: Mapping[str, Any]) -> dict[str, Any]:
    name = t["__class_fullname__"].rsplit(".", 1)[-1]
    p = float(t.get("p", 1.0))
    if name in ("Compose", "Sequential", "OneOf", "SomeOf"):
        children = [_albumentation(c) for c in t["transforms"]]
        if name == "OneOf":
            weights = [float(c.get("p", 1.0)) for c in t["transforms"]]
            for child in children:
                child.pop("probability", None)
            return {"one_of": {"ops": children, "weights": weights}, "probability": p}
        if name == "SomeOf":
            n = t.get("n", 1)
            return {"some_of": {"ops": children, "min_count": n, "max_count": n}, "probability": p}
        return {"sequential": {"ops": children}, "probability": p}
    interp = {"interpolation": _INTERPOLATION.get(t.get("interpolation", 1), "INTERPOLATION_BILINEAR")}
    border = {"border_mode": _BORDER.get(t.get("border_mode", 0), "BORDER_MODE_CONSTANT"), "fill_value": float(t.get("fill", 0) or 0)}
    if name in ("HorizontalFlip", "VerticalFlip", "Transpose", "ToGray"):
        op = {"HorizontalFlip": "horizontal_flip", "VerticalFlip": "vertical_flip", "Transpose": "transpose", "ToGray": "grayscale"}[name]
        body: dict[str, Any] = {}
    elif name == "Rotate":
        op, body = "rotate", {"angle_degrees": _range(t["limit"]), **interp, **border}
    elif name == "Affine":
        scale = t.get("scale", 1.0)
        sx, sy = _axis(scale, "x"), _axis(scale, "y")
        if sx != sy:
            raise ValueError("Albumentations Affine with different x and y scales has no equivalent here")
        translate = t.get("translate_percent") or {"x": (0, 0), "y": (0, 0)}
        shear = t.get("shear", 0) or 0
        op, body = "affine", {
            "scale": _range(sx),
            "translate_x": _range(_axis(translate, "x")),
            "translate_y": _range(_axis(translate, "y")),
            "rotate_degrees": _range(t.get("rotate", 0)),
            "shear_x_degrees": _range(_axis(shear, "x")),
            "shear_y_degrees": _range(_axis(shear, "y")),
            **interp,
            **border,
        }
    elif name == "Perspective":
        op, body = "perspective", {"scale": _range(t["scale"]), **interp, **border}
    elif name == "RandomResizedCrop":
        height, width = t["size"]
        op, body = "random_resized_crop", {"height": height, "width": width, "scale": _range(t["scale"]), "ratio": _range(t["ratio"]), **interp}
    elif name == "Resize":
        op, body = "resize", {"height": t["height"], "width": t["width"], **interp}
    elif name == "Crop":
        op, body = "crop", {"x": t["x_min"], "y": t["y_min"], "width": t["x_max"] - t["x_min"], "height": t["y_max"] - t["y_min"]}
    elif name in ("CenterCrop", "RandomCrop"):
        op, body = ("center_crop" if name == "CenterCrop" else "random_crop"), {"height": t["height"], "width": t["width"]}
    elif name == "ColorJitter":
        op, body = "color_jitter", {k: _range(t[k]) for k in ("brightness", "contrast", "saturation", "hue")}
    elif name == "RandomBrightnessContrast":
        op, body = "brightness_contrast", {"brightness": _range(t["brightness_limit"]), "contrast": _range(t["contrast_limit"], offset=1.0)}
    elif name == "RandomGamma":
        op, body = "gamma", {"gamma": _range(t["gamma_limit"], scale=0.01)}
    elif name == "GaussianBlur":
        op, body = "gaussian_blur", {"sigma": _range(t["sigma_limit"])}
    elif name == "GaussNoise":
        op, body = "gaussian_noise", {"std": _range(t["std_range"]), "per_channel": bool(t.get("per_channel", True))}
    elif name == "ImageCompression":
        op, body = "jpeg", {"quality": _range(t["quality_range"])}
    elif name == "Normalize":
        op, body = "normalize", {"mean": list(t["mean"]), "std": list(t["std"]), "max_pixel_value": float(t.get("max_pixel_value", 255.0))}
    else:
        raise ValueError(f"Albumentations transform {name} has no equivalent op here")
    return {op: body, "probability": p}


def from_albumentations(data: Mapping[str, Any]) -> dict[str, Any]:
    """Our JSON form of an Albumentations pipeline serialized with ``albumentations.to_dict``."""
    root = data.get("transform", data)
    converted = _albumentation(root)
    if "sequential" in converted and converted.get("probability", 1.0) == 1.0:
        return {"ops": converted["sequential"]["ops"]}
    return {"ops": [converted]}


