"""A PNG grid of augmentations with their annotations drawn, for people choosing a pipeline."""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from simulacra_services.annotation.domain.model import Box, Keypoints, Mask, Polygon, RotatedBox
from simulacra_services.annotation.formats import rle
from simulacra_services.augmentation.engine.pipeline import Augmented

_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230)]
_GAP = 4


def _displayable(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8:
        lo, hi = float(image.min()), float(image.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        image = np.clip((image - lo) * scale, 0, 255).astype(np.uint8)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def draw(result: Augmented) -> np.ndarray:
    """The augmented image (RGB uint8) with boxes, polygons, masks and keypoints drawn."""
    canvas = _displayable(result.image).copy()
    for annotation in result.annotations:
        colour = _PALETTE[annotation.category_id % len(_PALETTE)]
        g = annotation.geometry
        if isinstance(g, Box):
            cv2.rectangle(canvas, (round(g.x), round(g.y)), (round(g.x + g.w) - 1, round(g.y + g.h) - 1), colour, 1)
        elif isinstance(g, Polygon):
            parts = [np.round(np.asarray(p).reshape(-1, 2)).astype(np.int32) for p in g.parts]
            cv2.polylines(canvas, parts, True, colour, 1)
        elif isinstance(g, Mask):
            pixels = rle.decode(rle.counts_of(g.counts, g.height, g.width), g.height, g.width).astype(bool)
            canvas[pixels] = (canvas[pixels] * 0.5 + np.array(colour) * 0.5).astype(np.uint8)
        elif isinstance(g, RotatedBox):
            corners = cv2.boxPoints(((g.cx, g.cy), (g.w, g.h), g.angle_degrees))
            cv2.polylines(canvas, [np.round(corners).astype(np.int32)], True, colour, 1)
        elif isinstance(g, Keypoints):
            for point in g.points:
                if point.visibility:
                    cv2.circle(canvas, (round(point.x), round(point.y)), 2, colour, -1 if point.visibility == 2 else 1)
    return canvas


def grid(results: Sequence[Augmented], columns: int = 0) -> np.ndarray:
    """Tiles in row-major order on a white background, each tile as large as the largest result."""
    tiles = [draw(r) for r in results]
    columns = columns or min(len(tiles), 4)
    rows = math.ceil(len(tiles) / columns)
    tile_h = max(t.shape[0] for t in tiles)
    tile_w = max(t.shape[1] for t in tiles)
    out = np.full((rows * tile_h + (rows + 1) * _GAP, columns * tile_w + (columns + 1) * _GAP, 3), 255, np.uint8)
    for index, tile in enumerate(tiles):
        r, c = divmod(index, columns)
        y, x = _GAP + r * (tile_h + _GAP), _GAP + c * (tile_w + _GAP)
        out[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
    return out


def png(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    return encoded.tobytes()
