"""Mixing ops: several source items into one (mixup, cutmix, mosaic, copy-paste).

A mixing op draws its partners from ``Item.partners`` (other items sent with
the item, each with its annotations); without partners it does not fire.
Partners are used as they are, fitted to the current frame (resized, their
annotations with them), so the result depends only on (item, partners,
pipeline, item seed). The keys of the partners used are reported with the
result (the lineage of every source).

Occlusion: what is pasted over an item hides part of its annotations. Masks
lose the hidden pixels, boxes shrink to the box of their visible pixels,
polygons become the outline of their visible part, visible keypoints under the
paste become "labelled, hidden" (visibility 1), and annotations whose visible
fraction falls below ``min_visibility`` (or that vanish) are dropped. Cuboids and
pixel maps cannot be mixed consistently: ANNOTATION_NOT_TRANSFORMABLE (or dropped
under ``drop_untransformable``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from simulacra_services.annotation.formats import rle
from simulacra_services.annotation.domain import model
from simulacra_services.augmentation.engine.params import Int, IntList, Range, invalid
from simulacra_services.augmentation.engine.registry import MixOp, register, uniform


@dataclasses.dataclass(frozen=True)
class Source:
    """A partner fitted to the current frame."""

    key: str
    image: np.ndarray
    annotations: list[model.Annotation]


def _match(image: np.ndarray, like: np.ndarray) -> np.ndarray:
    """``image`` in the dtype and channel count of ``like``."""
    if image.dtype != like.dtype:
        image = (image.astype(np.float32) / 255.0) if like.dtype == np.float32 else np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    if image.shape[2] != like.shape[2]:
        if image.shape[2] == 1:
            image = np.repeat(image, like.shape[2], axis=2)[:, :, : like.shape[2]]
        elif like.shape[2] == 1:
            image = cv2.cvtColor(np.ascontiguousarray(image[:, :, :3]), cv2.COLOR_RGB2GRAY).reshape(image.shape[0], image.shape[1], 1)
        else:
            image = image[:, :, :3] if like.shape[2] == 3 else np.concatenate([image[:, :, :3], np.full(image.shape[:2] + (1,), 255 if image.dtype == np.uint8 else 1.0, image.dtype)], axis=2)
    return np.ascontiguousarray(image)


def relabel(annotations: Sequence[model.Annotation], prefix: str) -> list[model.Annotation]:
    """Ids and instance ids prefixed, so that a partner's annotations do not collide with the item's."""
    out = []
    for a in annotations:
        out.append(dataclasses.replace(a, id=f"{prefix}{a.id}"[:64] if a.id else "", instance_id=f"{prefix}{a.instance_id}"[:64] if a.instance_id else ""))
    return out


def _pixels_of_box(x0: float, y0: float, x1: float, y1: float, height: int, width: int) -> tuple[int, int, int, int]:
    """Pixel index ranges [c0, c1) x [r0, r1) whose centres lie in the box."""
    c0, r0 = max(0, math.ceil(x0 - 0.5)), max(0, math.ceil(y0 - 0.5))
    c1, r1 = min(width, math.floor(x1 - 0.5) + 1), min(height, math.floor(y1 - 0.5) + 1)
    return c0, r0, c1, r1


def _raster(annotation: model.Annotation, height: int, width: int) -> np.ndarray | None:
    g = annotation.geometry
    canvas = np.zeros((height, width), np.uint8)
    if isinstance(g, model.Box):
        c0, r0, c1, r1 = _pixels_of_box(g.x, g.y, g.x + g.w, g.y + g.h, height, width)
        canvas[r0:r1, c0:c1] = 1
    elif isinstance(g, model.Polygon):
        parts = [np.round(np.asarray(p).reshape(-1, 2) * 16 - 8).astype(np.int32) for p in g.parts]
        cv2.fillPoly(canvas, parts, 1, shift=4)
    elif isinstance(g, model.Mask):
        canvas = rle.decode(rle.counts_of(g.counts, g.height, g.width), g.height, g.width)
    elif isinstance(g, model.RotatedBox):
        corners = cv2.boxPoints(((g.cx - 0.5, g.cy - 0.5), (g.w, g.h), g.angle_degrees))
        cv2.fillPoly(canvas, [np.round(corners * 16).astype(np.int32)], 1, shift=4)
    else:
        return None
    return canvas


def occlude(annotations: Sequence[model.Annotation], hole: np.ndarray, policy: Any, path: str) -> tuple[list[model.Annotation], int]:
    """The annotations with what ``hole`` (bool [H, W]) covers hidden; and how many were dropped."""
    height, width = hole.shape
    if not hole.any():
        return list(annotations), 0
    shapes: dict[str, np.ndarray] = {}
    out: list[model.Annotation | None] = []
    for index, a in enumerate(annotations):
        g = a.geometry
        if isinstance(g, (model.Cuboid3d, model.PixelMap)):
            if policy.drop_untransformable:
                out.append(None)
                continue
            raise invalid("ANNOTATION_NOT_TRANSFORMABLE", f"{path}[{index}]", f"a {a.kind.value} annotation cannot be mixed with other items consistently")
        if isinstance(g, model.ClassLabel):
            out.append(a)
            continue
        if isinstance(g, model.Keypoints):
            points = tuple(
                model.Keypoint(p.x, p.y, 1) if p.visibility == 2 and 0 <= int(p.y) < height and 0 <= int(p.x) < width and hole[int(p.y), int(p.x)] else p
                for p in g.points
            )
            out.append(dataclasses.replace(a, geometry=model.Keypoints(points)))
            continue
        canvas = _raster(a, height, width)
        before = int(canvas.sum())
        if before == 0 or not (canvas.astype(bool) & hole).any():
            out.append(a)
            if a.instance_id and isinstance(g, (model.Polygon, model.Mask)):
                shapes.setdefault(a.instance_id, canvas.astype(bool))
            continue
        visible = canvas.astype(bool) & ~hole
        after = int(visible.sum())
        if after == 0 or after / before + 1e-9 < policy.min_visibility or after < policy.min_area_pixels:
            out.append(None)
            continue
        if a.instance_id and isinstance(g, (model.Polygon, model.Mask)):
            shapes[a.instance_id] = visible
        if isinstance(g, model.Mask):
            counts = rle.encode(visible)
            new: Any = model.Mask(height, width, rle.compress(counts) if g.compressed else tuple(counts))
            out.append(dataclasses.replace(a, geometry=new, area=None if a.area is None else float(after)))
        elif isinstance(g, model.Polygon):
            contours, _ = cv2.findContours(visible.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            parts = tuple(tuple(float(v) + 0.5 for v in c.reshape(-1)) for c in contours if len(c) >= 3)
            out.append(dataclasses.replace(a, geometry=model.Polygon(parts), area=None if a.area is None else float(after)) if parts else None)
        elif isinstance(g, model.Box):
            out.append(a)  # replaced below, once the instance shapes are known
        else:
            out.append(a)  # a rotated box keeps its geometry while enough of it shows
    for index, a in enumerate(out):
        if a is None or not isinstance(a.geometry, model.Box):
            continue
        region = shapes.get(a.instance_id) if a.instance_id else None
        if region is None:
            canvas = _raster(a, height, width).astype(bool)
            if not (canvas & hole).any():
                continue
            region = canvas & ~hole
        ys, xs = np.nonzero(region)
        if len(xs) == 0:
            out[index] = None
            continue
        box = model.Box(float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min()))
        if box.w < policy.min_width or box.h < policy.min_height:
            out[index] = None
            continue
        out[index] = dataclasses.replace(a, geometry=box, area=None if a.area is None else box.w * box.h)
    kept = [a for a in out if a is not None]
    return kept, len(annotations) - len(kept)


def blend_over(base: np.ndarray, top: np.ndarray, where: np.ndarray) -> np.ndarray:
    out = base.copy()
    out[where] = top[where]
    return out


@register
class Mixup(MixOp):
    """(1 - w) * item + w * partner; the annotations of both are kept (w in the attribute mixup_weight)."""

    name = "mixup"
    params = {"weight": Range((0.2, 0.5), 0.0, 1.0)}

    def mix(self, values, rng, image, annotations, sources: Sequence[Source], policy, path):
        weight = uniform(rng, values["weight"])
        partner = sources[0]
        mixed = cv2.addWeighted(image, 1.0 - weight, partner.image, weight, 0.0).reshape(image.shape)
        tagged = [dataclasses.replace(a, attributes={**a.attributes, "mixup_weight": f"{weight:.4f}"}) for a in partner.annotations]
        return mixed, list(annotations) + tagged, 0

    partners_needed = 1


@register
class Cutmix(MixOp):
    """A random rectangle of a partner pasted over the item (CutMix); annotations occluded and cut."""

    name = "cutmix"
    params = {"area": Range((0.1, 0.4), 0.0, 1.0)}
    partners_needed = 1

    def mix(self, values, rng, image, annotations, sources, policy, path):
        h, w = image.shape[:2]
        area = uniform(rng, values["area"])
        aspect = math.exp(uniform(rng, (math.log(0.5), math.log(2.0))))
        rw = max(1, min(w, int(round(math.sqrt(area * h * w * aspect)))))
        rh = max(1, min(h, int(round(math.sqrt(area * h * w / aspect)))))
        x0, y0 = int(rng.integers(0, w - rw + 1)), int(rng.integers(0, h - rh + 1))
        region = np.zeros((h, w), bool)
        region[y0 : y0 + rh, x0 : x0 + rw] = True
        own, dropped = occlude(annotations, region, policy, path)
        pasted, _ = occlude(sources[0].annotations, ~region, policy, path)
        return blend_over(image, sources[0].image, region), own + pasted, dropped


@register
class Mosaic(MixOp):
    """Four items (the item and three partners) in a 2x2 grid around a random centre, each scaled by ``scale``."""

    name = "mosaic"
    params = {"center": Range((0.3, 0.7), 0.0, 1.0), "scale": Range((0.5, 0.5), 0.0, 2.0, open_lo=True)}
    partners_needed = 3

    def mix(self, values, rng, image, annotations, sources, policy, path):
        from simulacra_services.augmentation.engine.ops.geometric import scaling, translation
        from simulacra_services.augmentation.engine.targets import Step, TargetTransform
        from simulacra_services.augmentation.engine.warp import Resampling, warp

        h, w = image.shape[:2]
        cx, cy = int(round(uniform(rng, values["center"]) * w)), int(round(uniform(rng, values["center"]) * h))
        s = uniform(rng, values["scale"])
        out = np.zeros_like(image)
        tiles = [(image, list(annotations))] + [(src.image, src.annotations) for src in sources[:3]]
        quadrants = [(0, 0, cx, cy), (cx, 0, w, cy), (0, cy, cx, h), (cx, cy, w, h)]
        result: list[model.Annotation] = []
        dropped = 0
        for index, ((tile, tile_annotations), (qx0, qy0, qx1, qy1)) in enumerate(zip(tiles, quadrants)):
            qw, qh = qx1 - qx0, qy1 - qy0
            if qw <= 0 or qh <= 0:
                dropped += sum(1 for a in tile_annotations if not isinstance(a.geometry, model.ClassLabel)) if index == 0 else 0
                continue
            # Each tile touches the mosaic centre with its inner corner.
            anchor_x = qx1 - w * s if index in (0, 2) else qx0
            anchor_y = qy1 - h * s if index in (0, 1) else qy0
            matrix = translation(anchor_x, anchor_y) @ scaling(s, s)
            placed = warp(tile, translation(-qx0, -qy0) @ matrix, qh, qw, Resampling())
            out[qy0:qy1, qx0:qx1] = placed
            steps = [Step(translation(-qx0, -qy0) @ matrix, qh, qw), Step(translation(qx0, qy0), h, w)]
            moved, lost = TargetTransform(steps, tile.shape[:2], policy, {}, path).apply(tile_annotations)
            result.extend(moved)
            dropped += lost if index == 0 else 0
        return out, result, dropped


@register
class CopyPaste(MixOp):
    """Object instances cut out by their masks from partners and pasted over the item.

    Instances: annotations with a mask (or a polygon) and their ``instance_id``
    siblings (box, keypoints); ``category_ids`` limits which categories are taken,
    so that rare objects can be put into common scenes with exact per-pixel labels.
    """

    name = "copy_paste"
    params = {"max_instances": Int(3, 1, 64), "category_ids": IntList(1, 2**31 - 1), "partners": Int(1, 1, 8)}

    def partners_wanted(self, values: Mapping[str, Any]) -> int:
        return values["partners"]

    def mix(self, values, rng, image, annotations, sources, policy, path):
        h, w = image.shape[:2]
        wanted = {int(c) for c in values["category_ids"]}
        candidates: list[tuple[int, model.Annotation]] = []
        for number, source in enumerate(sources):
            for a in source.annotations:
                if isinstance(a.geometry, (model.Mask, model.Polygon)) and (not wanted or a.category_id in wanted):
                    candidates.append((number, a))
        if not candidates:
            return image, list(annotations), 0
        order = rng.permutation(len(candidates))
        chosen = [candidates[i] for i in order[: values["max_instances"]]]
        out_image = image.copy()
        result = list(annotations)
        dropped = 0
        for number, shape in chosen:
            source = sources[number]
            mask = _raster(shape, h, w).astype(bool)
            if not mask.any():
                continue
            result, lost = occlude(result, mask, policy, path)
            dropped += lost
            out_image[mask] = source.image[mask]
            siblings = [a for a in source.annotations if shape.instance_id and a.instance_id == shape.instance_id and a is not shape] if shape.instance_id else []
            pasted = [shape] + siblings
            # The pasted object is whole: its box is the box of its mask.
            ys, xs = np.nonzero(mask)
            tight = model.Box(float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1))
            pasted = [dataclasses.replace(a, geometry=tight) if isinstance(a.geometry, model.Box) else a for a in pasted]
            if not any(isinstance(a.geometry, model.Box) for a in pasted):
                pasted.append(model.Annotation(tight, shape.category_id, id=f"{shape.id}.box"[:64] if shape.id else "", instance_id=shape.instance_id))
            result.extend(pasted)
        return out_image, result, dropped


def fit(source_key: str, image: np.ndarray, annotations: Sequence[model.Annotation], like: np.ndarray, categories: Mapping[int, model.Category], prefix: str, path: str) -> Source:
    """A partner resized to the frame of ``like`` (annotations with it), relabelled with ``prefix``."""
    from simulacra_services.augmentation.engine.ops.geometric import scaling
    from simulacra_services.augmentation.engine.spec import AnnotationPolicy
    from simulacra_services.augmentation.engine.targets import Step, TargetTransform
    from simulacra_services.augmentation.engine.warp import Resampling, warp

    h, w = like.shape[:2]
    ph, pw = image.shape[:2]
    moved = list(annotations)
    if (ph, pw) != (h, w):
        matrix = scaling(w / pw, h / ph)
        image = warp(image, matrix, h, w, Resampling())
        moved, _ = TargetTransform([Step(matrix, h, w)], (ph, pw), AnnotationPolicy(), categories, path).apply(moved)
    return Source(source_key, _match(image, like), relabel(moved, prefix))
