"""Applying a fused geometric transform to pixels: one resampling per run of geometric ops.

The matrix maps input to output coordinates with the corner-origin
convention; OpenCV samples at pixel centres, so the matrix is conjugated by a
half-pixel shift before it reaches ``cv2.warpAffine``/``cv2.warpPerspective``.
Transforms that only move whole pixels (flips, transposes, integer crops and
pads) skip interpolation and are done by slicing, which is exact and faster.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

_INTERPOLATION = {
    "INTERPOLATION_NEAREST": cv2.INTER_NEAREST,
    "INTERPOLATION_BILINEAR": cv2.INTER_LINEAR,
    "INTERPOLATION_BICUBIC": cv2.INTER_CUBIC,
}
_RANK = {"INTERPOLATION_NEAREST": 0, "INTERPOLATION_BILINEAR": 1, "INTERPOLATION_BICUBIC": 2}
_BORDER = {
    "BORDER_MODE_CONSTANT": cv2.BORDER_CONSTANT,
    "BORDER_MODE_REFLECT": cv2.BORDER_REFLECT_101,
    "BORDER_MODE_REPLICATE": cv2.BORDER_REPLICATE,
}
_HALF = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
_HALF_INV = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class Resampling:
    """How a fused run resamples the image: the finest interpolation any of its ops asked for,
    and the border of the last op that named one."""

    interpolation: str | None = None  # None: no op of the run named one (bilinear)
    border_mode: str = "BORDER_MODE_CONSTANT"
    fill_value: float = 0.0

    def merge(self, interpolation: str | None, border_mode: str | None, fill_value: float | None) -> Resampling:
        interp = self.interpolation
        if interpolation is not None and (interp is None or _RANK[interpolation] > _RANK[interp]):
            interp = interpolation
        return Resampling(
            interpolation=interp,
            border_mode=border_mode if border_mode is not None else self.border_mode,
            fill_value=fill_value if fill_value is not None else self.fill_value,
        )


def is_identity(matrix: np.ndarray) -> bool:
    return float(np.abs(matrix - _EYE).max()) <= 1e-12


_EYE = np.eye(3)


def _near(value: float, target: float) -> bool:
    return abs(value - target) <= 1e-9


def _pixel_permutation(matrix: np.ndarray, in_h: int, in_w: int, out_h: int, out_w: int) -> np.ndarray | None:
    """Integer index grids when ``matrix`` only moves whole pixels (signed permutation + integer shift)."""
    (a, b, c), (d, e, f), (g, h, i) = matrix.tolist()
    if not (_near(g, 0.0) and _near(h, 0.0) and _near(i, 1.0)):
        return None
    axis_kept = _near(b, 0.0) and _near(d, 0.0) and _near(abs(a), 1.0) and _near(abs(e), 1.0)
    axis_swapped = _near(a, 0.0) and _near(e, 0.0) and _near(abs(b), 1.0) and _near(abs(d), 1.0)
    if not (axis_kept or axis_swapped) or not (_near(c, round(c)) and _near(f, round(f))):
        return None
    return np.round(np.linalg.inv(matrix)).astype(np.int64)


def _slice_warp(image: np.ndarray, inverse: np.ndarray, out_h: int, out_w: int, fill: float, border: int) -> np.ndarray | None:
    """out[i, j] = image[src], src from the inverse map of pixel centres; None unless border is constant."""
    if border != cv2.BORDER_CONSTANT:
        return None
    ys, xs = np.arange(out_h) + 0.5, np.arange(out_w) + 0.5
    # Source column of output column j depends on j only when the map keeps axes, on i when it swaps them.
    swap = inverse[0, 0] == 0
    in_h, in_w = image.shape[:2]
    out = np.empty((out_h, out_w) + image.shape[2:], dtype=image.dtype)
    out[...] = np.asarray(fill, dtype=image.dtype) if image.dtype != np.uint8 else np.uint8(min(max(round(fill), 0), 255))
    if not swap:
        src_x = np.floor(inverse[0, 0] * xs + inverse[0, 2]).astype(np.int64)
        src_y = np.floor(inverse[1, 1] * ys + inverse[1, 2]).astype(np.int64)
        vx = (src_x >= 0) & (src_x < in_w)
        vy = (src_y >= 0) & (src_y < in_h)
        if vx.any() and vy.any():
            out[np.ix_(vy, vx)] = image[np.ix_(src_y[vy], src_x[vx])]
        return out
    src_x = np.floor(inverse[0, 1] * ys + inverse[0, 2]).astype(np.int64)  # source column per output row
    src_y = np.floor(inverse[1, 0] * xs + inverse[1, 2]).astype(np.int64)  # source row per output column
    vx = (src_x >= 0) & (src_x < in_w)
    vy = (src_y >= 0) & (src_y < in_h)
    if vx.any() and vy.any():
        block = image[np.ix_(src_y[vy], src_x[vx])]  # [rows=out cols, cols=out rows]
        out[np.ix_(vx, vy)] = np.swapaxes(block, 0, 1)
    return out


def _maps_inside(matrix: np.ndarray, in_h: int, in_w: int, out_h: int, out_w: int) -> np.ndarray | None:
    """Source positions of the output frame's corners when all lie inside the source frame."""
    corners = np.array([[0.0, 0.0, 1.0], [out_w, 0.0, 1.0], [out_w, out_h, 1.0], [0.0, out_h, 1.0]])
    source = corners @ np.linalg.inv(matrix).T
    source = source[:, :2] / source[:, 2:3]
    tol = 1e-6
    if (source[:, 0] >= -tol).all() and (source[:, 0] <= in_w + tol).all() and (source[:, 1] >= -tol).all() and (source[:, 1] <= in_h + tol).all():
        return source
    return None


def _integer_crop(matrix: np.ndarray, source: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) when the map is a positive axis-aligned scale of an integer-aligned source rectangle."""
    (_, b, _), (d, _, _), (g, h, i) = matrix.tolist()
    if abs(b) > 1e-12 or abs(d) > 1e-12 or abs(g) > 1e-12 or abs(h) > 1e-12 or abs(i - 1.0) > 1e-12:
        return None
    if matrix[0, 0] <= 0 or matrix[1, 1] <= 0:
        return None
    x0, y0 = source[0]
    x1, y1 = source[2]
    box = (float(x0), float(y0), float(x1), float(y1))
    if any(abs(v - round(v)) > 1e-6 for v in box):
        return None
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def warp(image: np.ndarray, matrix: np.ndarray, out_h: int, out_w: int, resampling: Resampling, *, nearest: bool = False) -> np.ndarray:
    """Resample a [H, W] or [H, W, C] array through ``matrix`` into [out_h, out_w(, C)].

    ``nearest`` forces nearest-neighbour and a zero constant border (masks, label and depth maps).
    """
    in_h, in_w = image.shape[:2]
    interp = cv2.INTER_NEAREST if nearest else _INTERPOLATION[resampling.interpolation or "INTERPOLATION_BILINEAR"]
    border = cv2.BORDER_CONSTANT if nearest else _BORDER[resampling.border_mode]
    fill = 0.0 if nearest else resampling.fill_value
    if (out_h, out_w) == (in_h, in_w) and is_identity(matrix):
        return image
    inverse = _pixel_permutation(matrix, in_h, in_w, out_h, out_w)
    if inverse is not None:
        out = _slice_warp(image, inverse.astype(np.float64), out_h, out_w, fill, border)
        if out is not None:
            return out
    inside = _maps_inside(matrix, in_h, in_w, out_h, out_w)
    if inside is not None:
        # The output sees only the inside of the source (crops, resizes): no border comes in, and
        # edge pixels must not blend with a fill colour; integer crops then scale like cv2.resize.
        border = cv2.BORDER_REPLICATE
        crop = _integer_crop(matrix, inside)
        if crop is not None:
            x0, y0, x1, y1 = crop
            region = image[y0:y1, x0:x1]
            if (x1 - x0, y1 - y0) == (out_w, out_h):
                return region.copy()
            # cv2.resize's INTER_NEAREST takes floor(dst * scale), half a pixel off the centres; _EXACT does not.
            exact = cv2.INTER_NEAREST_EXACT if interp == cv2.INTER_NEAREST else interp
            resized = cv2.resize(region if region.dtype != np.bool_ else region.view(np.uint8), (out_w, out_h), interpolation=exact)
            if region.dtype == np.bool_:
                resized = resized.view(np.bool_)
            return resized.reshape((out_h, out_w) + image.shape[2:])
    squeeze = image.ndim == 3 and image.shape[2] == 1
    src = image[:, :, 0] if squeeze else image
    if image.dtype == np.bool_:
        src = src.view(np.uint8)
    cv_matrix = _HALF_INV @ matrix @ _HALF
    channels = 1 if src.ndim == 2 else src.shape[2]
    border_value = (fill,) * min(channels, 4) if channels <= 4 else fill
    size = (out_w, out_h)
    g, h, i = cv_matrix[2].tolist()
    if abs(g) <= 1e-12 and abs(h) <= 1e-12 and abs(i - 1.0) <= 1e-12:
        out = cv2.warpAffine(src, cv_matrix[:2], size, flags=interp, borderMode=border, borderValue=border_value)
    else:
        out = cv2.warpPerspective(src, cv_matrix, size, flags=interp, borderMode=border, borderValue=border_value)
    if image.dtype == np.bool_:
        out = out.view(np.bool_)
    if squeeze or (src.ndim == 3 and out.ndim == 2):
        out = out[:, :, None]
    return out
