"""Non-affine warps (elastic distortion): a displacement field instead of a matrix.

Output pixel (i, j) takes the input at (j + 0.5 + dx[i, j], i + 0.5 + dy[i, j])
(corner-origin coordinates). Pixels use ``cv2.remap``; a point p moves to the
p' with p' + d(p') = p, found by fixed-point iteration (the field is smooth and
small, so a few steps converge to well under a pixel).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from simulacra_services.augmentation.engine.warp import _BORDER, _INTERPOLATION

_ITERATIONS = 8


@dataclass(frozen=True)
class Field:
    dx: np.ndarray  # float32 [H, W]
    dy: np.ndarray

    @property
    def height(self) -> int:
        return int(self.dx.shape[0])

    @property
    def width(self) -> int:
        return int(self.dx.shape[1])

    def remap(self, image: np.ndarray, interpolation: str = "INTERPOLATION_BILINEAR", border_mode: str = "BORDER_MODE_CONSTANT",
              fill_value: float = 0.0, *, nearest: bool = False) -> np.ndarray:
        grid_y, grid_x = np.mgrid[0 : self.height, 0 : self.width].astype(np.float32)
        map_x, map_y = grid_x + self.dx, grid_y + self.dy
        interp = cv2.INTER_NEAREST if nearest else _INTERPOLATION[interpolation]
        border = cv2.BORDER_CONSTANT if nearest else _BORDER[border_mode]
        fill = 0.0 if nearest else fill_value
        squeeze = image.ndim == 3 and image.shape[2] == 1
        src = image[:, :, 0] if squeeze else image
        if src.dtype == np.bool_:
            src = src.view(np.uint8)
        channels = 1 if src.ndim == 2 else src.shape[2]
        out = cv2.remap(src, map_x, map_y, interp, borderMode=border, borderValue=(fill,) * min(channels, 4))
        if image.dtype == np.bool_:
            out = out.view(np.bool_)
        return out[:, :, None] if squeeze or (image.ndim == 3 and out.ndim == 2) else out

    def _sample(self, points: np.ndarray) -> np.ndarray:
        """Bilinear d at [N, 2] corner-origin points (clamped to the frame)."""
        x = np.clip(points[:, 0] - 0.5, 0, self.width - 1)
        y = np.clip(points[:, 1] - 0.5, 0, self.height - 1)
        x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
        x1, y1 = np.minimum(x0 + 1, self.width - 1), np.minimum(y0 + 1, self.height - 1)
        fx, fy = x - x0, y - y0
        out = np.empty_like(points)
        for axis, field in enumerate((self.dx, self.dy)):
            top = field[y0, x0] * (1 - fx) + field[y0, x1] * fx
            bottom = field[y1, x0] * (1 - fx) + field[y1, x1] * fx
            out[:, axis] = top * (1 - fy) + bottom * fy
        return out

    def move(self, points: np.ndarray) -> np.ndarray:
        """Where input points land in the output: p' with p' + d(p') = p."""
        if len(points) == 0:
            return points
        moved = points.astype(np.float64).copy()
        for _ in range(_ITERATIONS):
            moved = points - self._sample(moved)
        return moved
