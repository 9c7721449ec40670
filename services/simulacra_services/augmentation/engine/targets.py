"""Moving annotations with the pixels: every kind the annotation-store holds.

Rules (also in docs/augmentation.md):

- Boxes of an object that also has a polygon or a mask (same non-empty
  ``instance_id``) become the box of the transformed, clipped shape: tight, not
  the swollen box of the transformed box corners. A box alone becomes the box
  of its transformed corners (Albumentations' rule) after the quadrilateral
  they form is clipped to the frame: where the frame cuts a turned box, the
  box of what is visible.
- Polygons are clipped to the frame (Sutherland-Hodgman), part by part; parts
  left with no area disappear. Masks and pixel maps are resampled with
  nearest-neighbour and a zero border; depth values are never blended.
- Keypoints move exactly; a labelled keypoint that leaves the frame gets
  visibility 0 (its coordinates kept under ``keep_outside_keypoints``, zeroed
  otherwise). A mirroring transform (negative determinant) swaps the
  category's ``flip_pairs``.
- Rotated boxes move their corners; a transform that keeps right angles gives
  the exact box, any other the minimum-area rectangle of the corners.
- Cuboids: crops, resizes, pads and rotations are a camera roll with new
  intrinsics (``_cuboid``); mirrors, shears, perspective and elastic fields
  fail with ANNOTATION_NOT_TRANSFORMABLE (or drop the cuboid when the policy
  says so).
- An annotation is dropped when nothing of it is left in the frame, when its
  visible fraction falls below ``min_visibility``, its area below
  ``min_area_pixels``, or its box below ``min_width`` x ``min_height``.
  ``area`` is recomputed on every annotation that had one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from simulacra_services.annotation.formats import rle
from simulacra_services.annotation.domain.model import (
    Annotation,
    Box,
    CameraIntrinsics,
    Category,
    ClassLabel,
    Cuboid3d,
    Keypoint,
    Keypoints,
    Mask,
    PixelMap,
    Point2d,
    Polygon,
    Quaternion,
    RotatedBox,
    Vector3,
)
from simulacra_services.augmentation.engine.field import Field
from simulacra_services.augmentation.engine.params import invalid
from simulacra_services.augmentation.engine.spec import AnnotationPolicy
from simulacra_services.augmentation.engine.warp import Resampling, warp

_EPS = 1e-9


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 3x3 matrix to [N, 2] points."""
    if len(points) == 0:
        return points.reshape(0, 2)
    homogeneous = np.concatenate([points, np.ones((len(points), 1))], axis=1) @ matrix.T
    return homogeneous[:, :2] / homogeneous[:, 2:3]


def polygon_area(points: np.ndarray) -> float:
    if len(points) < 3:
        return 0.0
    x, y = points[:, 0], points[:, 1]
    twice = float(np.dot(x[:-1], y[1:]) - np.dot(y[:-1], x[1:])) + float(x[-1] * y[0] - y[-1] * x[0])
    return abs(twice) / 2.0


def clip_polygon(points: np.ndarray, width: float, height: float) -> np.ndarray:
    """Sutherland-Hodgman clip of one closed polygon to [0, width] x [0, height]."""
    out = [tuple(p) for p in points]
    for axis, bound, keep_below in ((0, 0.0, False), (0, width, True), (1, 0.0, False), (1, height, True)):
        if not out:
            break
        src, out = out, []
        for index, current in enumerate(src):
            previous = src[index - 1]
            inside_cur = current[axis] <= bound if keep_below else current[axis] >= bound
            inside_prev = previous[axis] <= bound if keep_below else previous[axis] >= bound
            if inside_cur != inside_prev:
                t = (bound - previous[axis]) / (current[axis] - previous[axis])
                cross = (previous[0] + t * (current[0] - previous[0]), previous[1] + t * (current[1] - previous[1]))
                cross = (bound, cross[1]) if axis == 0 else (cross[0], bound)
                out.append(cross)
            if inside_cur:
                out.append(current)
    return np.array(out, dtype=np.float64).reshape(-1, 2)


def _bounds(points: np.ndarray) -> tuple[float, float, float, float]:
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    return float(x0), float(y0), float(x1), float(y1)


def jacobian_det(matrix: np.ndarray, x: float, y: float) -> float:
    """Local area scale of the transform at (x, y) (constant for affine maps)."""
    w = matrix[2, 0] * x + matrix[2, 1] * y + matrix[2, 2]
    a = matrix[:2, :2] * w - np.outer(matrix[:2, :2] @ (x, y) + matrix[:2, 2], matrix[2, :2])
    return float(np.linalg.det(a) / w**3)


@dataclasses.dataclass(frozen=True)
class Step:
    """One resampling of the image: ``matrix`` into an ``height`` x ``width`` frame, or a displacement ``field``."""

    matrix: np.ndarray
    height: int
    width: int
    field: Field | None = None

    def points(self, points: np.ndarray) -> np.ndarray:
        return self.field.move(points) if self.field is not None else transform_points(self.matrix, points)

    def resample_nearest(self, array: np.ndarray) -> np.ndarray:
        if self.field is not None:
            return self.field.remap(array, nearest=True)
        return warp(array, self.matrix, self.height, self.width, Resampling(), nearest=True)


def densify(corners: np.ndarray, per_edge: int = 16) -> np.ndarray:
    """Points along the edges of a closed polygon (a non-affine warp bends its edges)."""
    out = []
    for index in range(len(corners)):
        a, b = corners[index], corners[(index + 1) % len(corners)]
        t = np.arange(per_edge)[:, None] / per_edge
        out.append(a + (b - a) * t)
    return np.concatenate(out)


@dataclasses.dataclass
class _Shape:
    """An object's transformed shape, for the tight box of its instance."""

    bounds: tuple[float, float, float, float]
    visible: float


class TargetTransform:
    """Moves the annotations of one item through the resamplings of a pipeline, all at once.

    Annotations are moved once, at the end, through every step: shapes are
    transformed and clipped to each step's frame (content cut away by one step
    is lost to the next, as it is in the pixels), and a box keeps the exact
    quadrilateral of its corners until the end, so that two rotations around a
    pixel op do not swell it twice.
    """

    def __init__(
        self,
        steps: Sequence[Step],
        in_size: tuple[int, int],
        policy: AnnotationPolicy,
        categories: Mapping[int, Category],
        path: str = "annotations",
    ) -> None:
        self.steps = list(steps)
        self.in_h, self.in_w = in_size
        self.out_h, self.out_w = self.steps[-1].height, self.steps[-1].width
        self.matrix = np.eye(3)
        for step in self.steps:
            self.matrix = step.matrix @ self.matrix
        self.policy = policy
        self.categories = categories
        self.path = path
        self.mirrored = jacobian_det(self.matrix, self.in_w / 2.0, self.in_h / 2.0) < 0
        self.bends = any(step.field is not None for step in self.steps)

    def apply(self, annotations: Sequence[Annotation]) -> tuple[list[Annotation], int]:
        shapes: dict[str, _Shape] = {}
        results: list[Annotation | None] = [None] * len(annotations)
        # Shapes first: the boxes of their instances follow them.
        for index, annotation in enumerate(annotations):
            if isinstance(annotation.geometry, (Polygon, Mask)):
                results[index], shape = self._shape(annotation)
                if annotation.instance_id and shape is not None:
                    known = shapes.get(annotation.instance_id)
                    if known is None or isinstance(annotation.geometry, Polygon):
                        shapes[annotation.instance_id] = shape
        done = self._plain_boxes(annotations, shapes, results)
        for index, annotation in enumerate(annotations):
            if index not in done and not isinstance(annotation.geometry, (Polygon, Mask)):
                results[index] = self._other(annotation, index, shapes.get(annotation.instance_id) if annotation.instance_id else None)
        kept = [a for a in results if a is not None]
        return kept, len(annotations) - len(kept)

    def _plain_boxes(self, annotations: Sequence[Annotation], shapes: Mapping[str, _Shape], results: list[Annotation | None]) -> set[int]:
        """Boxes without a shape whose corners stay inside every frame, all at once (the common case).

        Such a box needs no clipping and is fully visible; the others take the general path.
        """
        indices = [
            i for i, a in enumerate(annotations) if isinstance(a.geometry, Box) and not (a.instance_id and a.instance_id in shapes)
        ]
        if not indices or self.bends:
            return set()
        boxes = np.array([[annotations[i].geometry.x, annotations[i].geometry.y, annotations[i].geometry.w, annotations[i].geometry.h] for i in indices])
        x0, y0, x1, y1 = boxes[:, 0], boxes[:, 1], boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 3]
        points = np.stack([np.stack([x0, y0], 1), np.stack([x1, y0], 1), np.stack([x1, y1], 1), np.stack([x0, y1], 1)], axis=1).reshape(-1, 2)
        inside = np.ones(len(indices), dtype=bool)
        for step in self.steps:
            points = transform_points(step.matrix, points)
            ok = (points[:, 0] >= 0) & (points[:, 0] <= step.width) & (points[:, 1] >= 0) & (points[:, 1] <= step.height)
            inside &= ok.reshape(-1, 4).all(axis=1)
        corners = points.reshape(-1, 4, 2)
        low, high = corners.min(axis=1), corners.max(axis=1)
        done = set()
        for row, index in enumerate(indices):
            if not inside[row]:
                continue
            done.add(index)
            (bx0, by0), (bx1, by1) = low[row].tolist(), high[row].tolist()
            w, h = bx1 - bx0, by1 - by0
            if self._keep(1.0, w * h, w, h):
                results[index] = self._with(annotations[index], Box(bx0, by0, w, h), w * h)
        return done

    # -- rules ----------------------------------------------------------------

    def _keep(self, visible: float, area: float, width: float, height: float) -> bool:
        p = self.policy
        return (
            visible > 0.0
            and area > 0.0
            and width > 0.0
            and height > 0.0
            and visible + 1e-9 >= p.min_visibility
            and area >= p.min_area_pixels
            and width >= p.min_width
            and height >= p.min_height
        )

    def _with(self, annotation: Annotation, geometry: object, area: float) -> Annotation:
        return dataclasses.replace(annotation, geometry=geometry, area=None if annotation.area is None else float(area))

    def _through(self, points: np.ndarray) -> tuple[np.ndarray, float]:
        """A closed polygon through every step, clipped to each frame; and its unclipped final area."""
        clipped = points
        for step in self.steps:
            if len(clipped) < 3:
                break
            clipped = clip_polygon(step.points(clipped), step.width, step.height)
        return clipped, polygon_area(self._move(points))

    def _move(self, points: np.ndarray) -> np.ndarray:
        """Points through every step, unclipped."""
        for step in self.steps:
            points = step.points(points)
        return points

    def _points_inside(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Points through every step, and whether each stayed inside every frame."""
        inside = np.ones(len(points), dtype=bool)
        for step in self.steps:
            points = step.points(points)
            inside &= (points[:, 0] >= 0) & (points[:, 0] <= step.width) & (points[:, 1] >= 0) & (points[:, 1] <= step.height)
        return points, inside

    # -- kinds ----------------------------------------------------------------

    def _shape(self, annotation: Annotation) -> tuple[Annotation | None, _Shape | None]:
        geometry = annotation.geometry
        if isinstance(geometry, Polygon):
            parts, total, visible = [], 0.0, 0.0
            for part in geometry.parts:
                points = np.asarray(part, dtype=np.float64).reshape(-1, 2)
                clipped, full = self._through(densify(points, 4) if self.bends else points)
                total += full
                area = polygon_area(clipped)
                if len(clipped) >= 3 and area > _EPS:
                    parts.append(clipped)
                    visible += area
            if not parts:
                return None, _Shape((0.0, 0.0, 0.0, 0.0), 0.0)
            x0, y0, x1, y1 = _bounds(np.concatenate(parts))
            fraction = min(visible / total, 1.0) if total > _EPS else 0.0
            shape = _Shape((x0, y0, x1, y1), fraction)
            if not self._keep(fraction, visible, x1 - x0, y1 - y0):
                return None, shape
            new = Polygon(parts=tuple(tuple(float(v) for v in p.ravel()) for p in parts))
            return self._with(annotation, new, visible), shape
        assert isinstance(geometry, Mask)
        pixels = rle.decode(rle.counts_of(geometry.counts, geometry.height, geometry.width), geometry.height, geometry.width)
        before = float(pixels.sum())
        moved = pixels
        for step in self.steps:
            moved = step.resample_nearest(moved)
        after = float(moved.sum())
        counts = rle.encode(moved)
        x, y, w, h = rle.to_bbox(counts, self.out_h)
        if before:
            ys, xs = np.nonzero(pixels)
            scale = abs(jacobian_det(self.matrix, float(xs.mean()) + 0.5, float(ys.mean()) + 0.5))
        else:
            scale = 1.0
        fraction = min(after / (before * scale), 1.0) if before and scale > _EPS else 0.0
        shape = _Shape((x, y, x + w, y + h), fraction)
        if not self._keep(fraction, after, w, h):
            return None, shape
        stored: tuple[int, ...] | str = rle.compress(counts) if geometry.compressed else tuple(counts)
        return self._with(annotation, Mask(height=self.out_h, width=self.out_w, counts=stored), after), shape

    def _other(self, annotation: Annotation, index: int, shape: _Shape | None) -> Annotation | None:
        geometry = annotation.geometry
        field = f"{self.path}[{index}]"
        if isinstance(geometry, ClassLabel):
            return annotation
        if isinstance(geometry, Box):
            return self._box(annotation, geometry, shape)
        if isinstance(geometry, RotatedBox):
            return self._rotated_box(annotation, geometry)
        if isinstance(geometry, Keypoints):
            return self._keypoints(annotation, geometry, field)
        if isinstance(geometry, Cuboid3d):
            return self._cuboid(annotation, geometry, field)
        if isinstance(geometry, PixelMap):
            return self._pixel_map(annotation, geometry, field)
        raise TypeError(f"unknown annotation geometry {type(geometry).__name__}")

    def _box(self, annotation: Annotation, box: Box, shape: _Shape | None) -> Annotation | None:
        if shape is not None:
            x0, y0, x1, y1 = shape.bounds
            visible = shape.visible
        else:
            corners = np.array([[box.x, box.y], [box.x + box.w, box.y], [box.x + box.w, box.y + box.h], [box.x, box.y + box.h]])
            if self.bends:
                corners = densify(corners)
            # The box of the clipped quadrilateral: where the frame cuts a turned box, this is the
            # box of what is visible, not the (looser) clipped box of all four corners.
            clipped, full = self._through(corners)
            if len(clipped) < 3 or full <= _EPS:
                return None
            x0, y0, x1, y1 = _bounds(clipped)
            visible = min(polygon_area(clipped) / full, 1.0)
        w, h = x1 - x0, y1 - y0
        if not self._keep(visible, w * h, w, h):
            return None
        return self._with(annotation, Box(x0, y0, w, h), w * h)

    def _rotated_box(self, annotation: Annotation, box: RotatedBox) -> Annotation | None:
        a = math.radians(box.angle_degrees)
        u = np.array([math.cos(a), math.sin(a)]) * box.w / 2.0
        v = np.array([-math.sin(a), math.cos(a)]) * box.h / 2.0
        c = np.array([box.cx, box.cy])
        corners = np.array([c - u - v, c + u - v, c + u + v, c - u + v])
        moved = self._move(corners)
        e1, e2 = moved[1] - moved[0], moved[3] - moved[0]
        if abs(float(np.dot(e1, e2))) <= 1e-6 * (np.linalg.norm(e1) * np.linalg.norm(e2) + _EPS):
            w, h = float(np.linalg.norm(e1)), float(np.linalg.norm(e2))
            angle = math.degrees(math.atan2(e1[1], e1[0]))
        else:
            _, (w, h), angle = cv2.minAreaRect(moved.astype(np.float32))
        angle = (angle + 180.0) % 360.0 - 180.0
        if angle >= 180.0:
            angle -= 360.0
        clipped, total = self._through(corners)
        visible = polygon_area(clipped) if len(clipped) >= 3 else 0.0
        fraction = min(visible / total, 1.0) if total > _EPS else 0.0
        centre, inside = self._points_inside(c.reshape(1, 2))
        if not inside[0] or not self._keep(fraction, visible, w, h):
            return None
        return self._with(annotation, RotatedBox(float(centre[0, 0]), float(centre[0, 1]), float(w), float(h), float(angle)), w * h)

    def _keypoints(self, annotation: Annotation, keypoints: Keypoints, field: str) -> Annotation:
        points = list(keypoints.points)
        if self.mirrored:
            category = self.categories.get(annotation.category_id)
            if category is None:
                raise invalid(
                    "CATEGORY_REQUIRED",
                    f"{field}.category_id",
                    f"keypoints of category {annotation.category_id} need the category (its flip_pairs) to be sent",
                    category_id=annotation.category_id,
                )
            for left, right in category.flip_pairs:
                if left < len(points) and right < len(points):
                    points[left], points[right] = points[right], points[left]
        coords, inside = self._points_inside(np.array([[p.x, p.y] for p in points], dtype=np.float64).reshape(-1, 2))
        moved = []
        for point, (x, y), stayed in zip(points, coords, inside):
            x, y = float(x), float(y)
            if point.visibility == 0 or not stayed:
                # A labelled point that left a frame is gone from the pixels: "not labelled" now.
                moved.append(Keypoint(x, y, 0) if self.policy.keep_outside_keypoints else Keypoint(0.0, 0.0, 0))
            else:
                moved.append(Keypoint(x, y, point.visibility))
        area = None if annotation.area is None else annotation.area * abs(jacobian_det(self.matrix, self.in_w / 2.0, self.in_h / 2.0))
        return dataclasses.replace(annotation, geometry=Keypoints(points=tuple(moved)), area=area)

    def _cuboid(self, annotation: Annotation, cuboid: Cuboid3d, field: str) -> Annotation | None:
        """Affine maps without mirror or shear: a camera roll (about the optical axis) and new intrinsics.

        The map's linear part factors as A = R(phi) diag(sx, sy). Then every projected point
        p = (fx X/Z + cx, fy Y/Z + cy) goes to A p + t, which is the projection of the point rolled
        by phi about the camera's z axis, with focal lengths (fx sx, fy sy) and principal point
        A (cx, cy) + t, as long as the roll sees equal focal lengths (phi = 0 or fx sx = fy sy).
        """
        m = self.matrix / self.matrix[2, 2]
        a, t = m[:2, :2], m[:2, 2]
        q, r = np.linalg.qr(a)
        signs = np.sign(np.diag(r))
        q, r = q * signs, signs[:, None] * r
        sx, sy, shear = float(r[0, 0]), float(r[1, 1]), float(r[0, 1])
        phi = math.atan2(q[1, 0], q[0, 0])
        intrinsics = cuboid.intrinsics
        fx, fy = (intrinsics.fx * sx, intrinsics.fy * sy) if intrinsics is not None else (sx, sy)
        rolls = abs(phi) > 1e-9
        representable = (
            not self.bends
            and abs(m[2, 0]) < _EPS
            and abs(m[2, 1]) < _EPS
            and np.linalg.det(q) > 0
            and sx > 0
            and sy > 0
            and abs(shear) <= 1e-9 * max(sx, sy)
            and (not rolls or abs(fx - fy) <= 1e-6 * max(fx, fy))
        )
        if not representable:
            if self.policy.drop_untransformable:
                return None
            raise invalid(
                "ANNOTATION_NOT_TRANSFORMABLE",
                f"{field}.cuboid",
                "a 3D cuboid follows crops, resizes, pads and rotations (a camera roll with new intrinsics); "
                "this pipeline mirrors, shears, scales unevenly under a rotation, warps in perspective or bends (elastic) the image",
            )
        if intrinsics is not None:
            cx, cy = (a @ np.array([intrinsics.cx, intrinsics.cy]) + t).tolist()
            intrinsics = CameraIntrinsics(fx, fy, cx, cy)
        corners = tuple(Point2d(float(x), float(y)) for x, y in transform_points(m, np.array([[c.x, c.y] for c in cuboid.projected_corners]).reshape(-1, 2)))
        center, rotation = cuboid.center, cuboid.rotation
        if rolls:
            c, s = math.cos(phi), math.sin(phi)
            center = Vector3(c * center.x - s * center.y, s * center.x + c * center.y, center.z)
            w, z = math.cos(phi / 2), math.sin(phi / 2)  # the roll as a quaternion, applied before the object's rotation
            q0 = rotation
            rotation = Quaternion(w * q0.w - z * q0.z, w * q0.x - z * q0.y, w * q0.y + z * q0.x, w * q0.z + z * q0.w)
        moved = dataclasses.replace(cuboid, intrinsics=intrinsics, projected_corners=corners, center=center, rotation=rotation)
        return dataclasses.replace(annotation, geometry=moved)

    def _pixel_map(self, annotation: Annotation, pixel_map: PixelMap, field: str) -> Annotation:
        if pixel_map.data is None:
            raise invalid("ANNOTATION_NOT_TRANSFORMABLE", f"{field}.pixel_map.tensor", "a pixel map needs its data inline to be augmented")
        little = np.dtype(pixel_map.dtype.value).newbyteorder("<")
        moved = np.frombuffer(pixel_map.data, dtype=little).reshape(pixel_map.shape).astype(little.newbyteorder("="))
        for step in self.steps:
            moved = step.resample_nearest(moved)
        shape = (self.out_h, self.out_w) + tuple(pixel_map.shape[2:])
        data = np.ascontiguousarray(moved.reshape(shape), dtype=little).tobytes()
        return dataclasses.replace(annotation, geometry=dataclasses.replace(pixel_map, shape=shape, data=data, sha256=""))
