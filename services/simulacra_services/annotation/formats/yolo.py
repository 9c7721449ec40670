"""YOLO (txt) detection labels <-> axis-aligned boxes, without storage.

A YOLO label file has one line per box::

    class cx cy w h [score]

``class`` is a 0-based class index; ``cx cy w h`` are the box center and size
normalized by the image width and height, so they lie in [0, 1]. An optional
sixth column is a prediction confidence (kept as the annotation's score).
Blank lines and lines starting with ``#`` are ignored.

Mapping: class k is category id k + 1 on import. On export the categories of
the dataset, sorted by id, are numbered 0..N-1 (so a dataset imported from
YOLO exports with its original class indices); ``class_indices`` builds that
numbering.

Errors name the file and the 1-based line (``labels/train/a.txt:3``), reason
``INVALID_YOLO``; box validation (size, bounds) is left to the caller, which
knows the box bounds policy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from simulacra_services.annotation.domain.model import Box, Category, ImageSize
from simulacra_services.core import errors

MAX_LABEL_FILE_BYTES = 16 * 1024 * 1024
MAX_LINES = 10_000  # the annotation limit of one item
_TOLERANCE = 1e-6  # rounding of normalized values written with few digits


@dataclass(frozen=True)
class YoloBox:
    """One line of a label file, in pixels: ``class_index`` and a COCO-style box."""

    class_index: int
    box: Box
    score: float | None = None


def _invalid(path: str, message: str, **metadata: object) -> errors.SimulacraError:
    return errors.InvalidArgument("INVALID_YOLO", f"{path}: {message}", {"field": path, **metadata})


def parse_labels(data: bytes, image: ImageSize, class_count: int, path: str = "labels") -> list[YoloBox]:
    """The boxes (in pixels) of one YOLO label file of an image of size ``image``."""
    if len(data) > MAX_LABEL_FILE_BYTES:
        raise _invalid(path, f"{len(data)} bytes, at most {MAX_LABEL_FILE_BYTES}", limit=MAX_LABEL_FILE_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid(path, "is not UTF-8 text") from None
    boxes: list[YoloBox] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if len(boxes) == MAX_LINES:
            raise _invalid(path, f"more than {MAX_LINES} boxes", limit=MAX_LINES)
        boxes.append(_parse_line(stripped, image, class_count, f"{path}:{number}"))
    return boxes


def _parse_line(line: str, image: ImageSize, class_count: int, where: str) -> YoloBox:
    fields = line.split()
    if len(fields) not in (5, 6):
        raise _invalid(where, f"expected 'class cx cy w h' (5 numbers, or 6 with a score), got {len(fields)} fields", line=errors.shown(line))
    try:
        class_index = int(fields[0])
    except ValueError:
        raise _invalid(where, f"class must be an integer index, got {fields[0][:50]!r}") from None
    if not 0 <= class_index < class_count:
        raise _invalid(where, f"class {class_index} is not in 0..{class_count - 1} (the class names given)", class_index=class_index, class_count=class_count)
    try:
        values = [float(v) for v in fields[1:]]
    except ValueError:
        raise _invalid(where, f"cx cy w h must be numbers, got {errors.shown(' '.join(fields[1:5]))!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise _invalid(where, "numbers must be finite")
    cx, cy, w, h = values[:4]
    for name, value in (("cx", cx), ("cy", cy), ("w", w), ("h", h)):
        if not -_TOLERANCE <= value <= 1 + _TOLERANCE:
            raise _invalid(where, f"{name} = {value} is not normalized to [0, 1]", value=value)
    if w <= 0 or h <= 0:
        raise _invalid(where, f"box size must be positive, got w = {w}, h = {h}")
    score = values[4] if len(values) == 5 else None
    if score is not None and not 0.0 <= score <= 1.0:
        raise _invalid(where, f"score must lie in [0, 1], got {score}", value=score)
    return YoloBox(class_index, to_pixels(cx, cy, w, h, image), score)


def to_pixels(cx: float, cy: float, w: float, h: float, image: ImageSize) -> Box:
    """A normalized center/size box as a pixel box (top-left corner and size)."""
    return Box((cx - w / 2) * image.width, (cy - h / 2) * image.height, w * image.width, h * image.height)


def to_normalized(box: Box, image: ImageSize) -> tuple[float, float, float, float]:
    """``(cx, cy, w, h)`` of a pixel box, normalized by the image size."""
    return (
        (box.x + box.w / 2) / image.width,
        (box.y + box.h / 2) / image.height,
        box.w / image.width,
        box.h / image.height,
    )


def format_labels(boxes: Iterable[YoloBox], image: ImageSize) -> bytes:
    """A label file; numbers are written with ``repr`` so nothing is lost to rounding."""
    lines = []
    for yolo_box in boxes:
        numbers = " ".join(repr(v) for v in to_normalized(yolo_box.box, image))
        score = f" {yolo_box.score!r}" if yolo_box.score is not None else ""
        lines.append(f"{yolo_box.class_index} {numbers}{score}\n")
    return "".join(lines).encode()


def class_indices(categories: Sequence[Category]) -> dict[int, int]:
    """Category id -> YOLO class index: categories sorted by id, numbered from 0."""
    return {category.category_id: index for index, category in enumerate(sorted(categories, key=lambda c: c.category_id))}


def class_names(categories: Sequence[Category]) -> list[str]:
    """Names in class-index order (what data.yaml lists)."""
    return [category.display_name for category in sorted(categories, key=lambda c: c.category_id)]


def format_data_yaml(names: Sequence[str], splits: Iterable[str]) -> bytes:
    """An Ultralytics-style data.yaml: relative split directories and the class names."""
    import yaml  # only exports need it

    document: dict[str, object] = {"path": "."}
    for split in sorted(set(splits)):
        document[split] = f"images/{split}"
    document["nc"] = len(names)
    document["names"] = {index: name for index, name in enumerate(names)}
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True).encode()


def parse_class_names(data: bytes, path: str = "data.yaml") -> list[str]:
    """Class names from a data.yaml (``names`` as a list or an index->name map) or a
    classes.txt (one name a line)."""
    if path.endswith((".yaml", ".yml")):
        import yaml

        try:
            document = yaml.safe_load(data)
        except yaml.YAMLError as error:
            raise _invalid(path, f"is not YAML: {error}") from None
        names = document.get("names") if isinstance(document, Mapping) else None
        if isinstance(names, Mapping):
            if sorted(names) != list(range(len(names))):
                raise _invalid(f"{path}.names", "class indices must be 0..N-1")
            names = [names[i] for i in range(len(names))]
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise _invalid(f"{path}.names", "must list the class names")
        return names
    names = [line.strip() for line in data.decode("utf-8", errors="replace").splitlines() if line.strip()]
    if not names:
        raise _invalid(path, "lists no class names")
    return names
