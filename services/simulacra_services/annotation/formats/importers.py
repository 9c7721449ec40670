"""Imports: COCO, YOLO and MNIST sources planned and checked (``import_run`` writes them).

Planning (``plan_import``) reads the uploaded files (blobs), parses and
validates them and decides, for every image, the item to create, without
writing anything. ``import_run.run_import`` (called by a job, ``jobs.py``) then prepares
the items in chunks (image decoding and checks, with progress and
cancellation between chunks) and only then writes them, chunk by chunk. So a
bad record anywhere in the input fails the job before the dataset changes.

Errors are the domain errors of ``coco``, ``yolo``, ``mnist`` and
``validation``, with the uploaded file they come from added: metadata
``file`` (its manifest path) and the message prefixed with it.

Mapping decisions:

- COCO: one item per COCO image, ``file_name`` kept, the COCO image id in
  attribute ``coco_image_id`` (export reuses it), lineage real with the
  annotation file's name as origin; annotations as ``coco.parse_coco`` makes
  them. The declared width/height must equal the real image's
  (IMAGE_SIZE_MISMATCH), because the annotations were checked against them.
- YOLO: class k is category id k + 1 named ``class_names[k]``; each label
  line a Box (pixel coordinates from the real image size) with the line's
  optional score; ``file_name`` is the image's manifest path without the
  Ultralytics layout's ``images/{split}/`` (``images/train/a/1.jpg`` ->
  ``a/1.jpg``), the full path is the lineage origin.
- MNIST: digit d is category id d + 1 named "d"; each image a grayscale PNG
  item ``mnist/NNNNN.png`` (its index) with one ClassLabel annotation and
  attribute ``mnist_index``.
- Items whose ``(file_name, image sha256)`` the working state already has are
  skipped (counted in ``ImportResult.items_skipped``),
  so running the same import again writes nothing twice. An imported item's id
  derives from that pair (``imported_item_id``): the same files get the same
  ids in every run.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Union

from PIL import Image, UnidentifiedImageError

from simulacra_services.annotation.domain import identifiers
from simulacra_services.annotation.domain.model import Annotation, BoxBoundsPolicy, Category, ClassLabel, ImageSize
from simulacra_services.annotation.domain.records import ImageInput, Lineage, NewItem
from simulacra_services.annotation.formats import coco, mnist, yolo
from simulacra_services.core import errors

_log = logging.getLogger("simulacra.annotation.jobs")

MAX_COCO_IMAGES = 1_000_000
MAX_YOLO_IMAGES = 1_000_000
MAX_WARNINGS = 100

BlobReader = Callable[[str], bytes]
"""Bytes of an uploaded blob by sha256 (``store.blobs.read``)."""


@dataclass(frozen=True)
class ManifestEntry:
    """One uploaded file: its relative path and the sha256 of its content."""

    path: str
    sha256: str


@dataclass(frozen=True)
class CocoSource:
    annotations: ManifestEntry
    images: tuple[ManifestEntry, ...]
    split: str = ""


@dataclass(frozen=True)
class YoloImage:
    image: ManifestEntry
    labels: ManifestEntry | None = None
    split: str = ""


@dataclass(frozen=True)
class YoloSource:
    class_names: tuple[str, ...]
    images: tuple[YoloImage, ...]


@dataclass(frozen=True)
class MnistSource:
    images: ManifestEntry
    labels: ManifestEntry
    split: str = ""
    limit: int = 0


ImportSource = Union[CocoSource, YoloSource, MnistSource]


def imported_item_id(file_name: str, sha256: str) -> str:
    """An imported item's id: 32 hex digits of sha256(file name, NUL, image sha256)."""
    return hashlib.sha256(f"{file_name}\0{sha256}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class PlannedItem:
    """An item to create; ``path`` names its record in errors (``images[3]``);
    ``declared_size`` is the size the source claims (checked once the image is read)."""

    item: NewItem
    path: str
    declared_size: ImageSize | None = None


@dataclass
class ImportPlan:
    categories: list[Category]
    """Every category the import uses (created when missing, checked when present)."""
    items: list[PlannedItem]
    skipped: int = 0
    warnings: list[str] = field(default_factory=list)

    def new_file(self, file_name: str, sha256: str, live_files: set[tuple[str, str]]) -> str | None:
        """The item id for an image file (name, content sha256) the working state does not have yet;
        None, counted as skipped, for one it has. (Within one source the file names are unique: the
        COCO, YOLO and MNIST planners refuse or never make a repeated one.) The id derives from the
        name and the content, so importing the same files gives the same ids in every run: item order,
        seeds keyed by item id, and whatever is trained on them, repeat exactly."""
        if (file_name, sha256) in live_files:
            self.skipped += 1
            return None
        return imported_item_id(file_name, sha256)

    @property
    def annotation_count(self) -> int:
        return sum(len(p.item.annotations) for p in self.items)


@contextmanager
def in_file(path: str) -> Iterator[None]:
    """Name ``path`` (a manifest path) in any domain error raised inside."""
    try:
        yield
    except errors.SimulacraError as error:
        if "file" in error.metadata:
            raise
        raise type(error)(error.reason, f"{path}: {error.message}", {**error.metadata, "file": path}) from None


def image_size(data: bytes, field: str) -> ImageSize:
    """Width and height from an image's header, without decoding its pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=("PNG", "JPEG")) as image:
                width, height = image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise errors.InvalidArgument(
            "INVALID_IMAGE", f"{field}: the bytes are not a PNG or JPEG image", {"field": field}
        ) from None
    return ImageSize(width, height)


def check_categories(wanted: Sequence[Category], existing: Sequence[Category], *, field: str = "categories") -> list[Category]:
    """The categories of ``wanted`` the dataset lacks; CATEGORY_CONFLICT when one disagrees.

    A category agrees when the dataset has the same id with the same name,
    supercategory, keypoint names, skeleton and flip pairs
    (``identifiers.categories_agree``, the rule ``store.ensure_categories``
    applies too); a name held by another id disagrees.
    """
    by_id = {c.category_id: c for c in existing}
    by_name = {c.display_name: c for c in existing}
    missing = []
    for index, category in enumerate(wanted):
        present = by_id.get(category.category_id)
        named = by_name.get(category.display_name)
        if present is None and named is None:
            missing.append(category)
            continue
        if present is None or not identifiers.categories_agree(present, category):
            held = present or named
            assert held is not None
            raise errors.FailedPrecondition(
                "CATEGORY_CONFLICT",
                f"{field}[{index}]: category {category.category_id} {category.display_name!r} of the import disagrees with the "
                f"dataset's category {held.category_id} {held.display_name!r}; rename or renumber one of them",
                {"field": f"{field}[{index}]", "category_id": category.category_id, "existing_category_id": held.category_id},
            )
    return missing


def check_source(source: ImportSource) -> None:
    """Rules that need no storage: counts, unique paths, split names, class names, limit.

    Fields are named as in ``CreateImportJobRequest`` (``import_job.coco.images[3].path``).
    """
    if isinstance(source, CocoSource):
        _check_count(len(source.images), MAX_COCO_IMAGES, "import_job.coco.images")
        _check_unique([e.path for e in source.images], "import_job.coco.images")
        identifiers.normalize_split(source.split, "import_job.coco.split")
    elif isinstance(source, YoloSource):
        _check_count(len(source.images), MAX_YOLO_IMAGES, "import_job.yolo.images")
        if not source.class_names:
            raise errors.InvalidArgument(
                "MISSING_CLASS_NAMES", "import_job.yolo.class_names: give the class names (class k is the k-th name)", {"field": "import_job.yolo.class_names"}
            )
        yolo_categories(source.class_names)
        _check_unique([i.image.path for i in source.images], "import_job.yolo.images.image")
        for index, image in enumerate(source.images):
            identifiers.normalize_split(image.split, f"import_job.yolo.images[{index}].split")
    else:
        identifiers.normalize_split(source.split, "import_job.mnist.split")
        if source.limit < 0:
            raise errors.InvalidArgument("INVALID_LIMIT", f"import_job.mnist.limit: must be >= 0, got {source.limit}", {"field": "import_job.mnist.limit"})


def _check_count(count: int, limit: int, field: str) -> None:
    if count > limit:
        raise errors.InvalidArgument("TOO_MANY_IMAGES", f"{field}: {count} images, at most {limit}", {"field": field, "count": count, "limit": limit})


def _check_unique(paths: Sequence[str], field: str) -> None:
    seen: dict[str, int] = {}
    for index, path in enumerate(paths):
        if path in seen:
            raise errors.InvalidArgument(
                "DUPLICATE_PATH",
                f"{field}[{index}].path: {path!r} is listed twice (also at [{seen[path]}])",
                {"field": f"{field}[{index}].path", "path": path},
            )
        seen[path] = index


def _warn(plan_warnings: list[str], message: str) -> None:
    if len(plan_warnings) < MAX_WARNINGS:
        plan_warnings.append(message)


# ---------------------------------------------------------------------------
# COCO
# ---------------------------------------------------------------------------


def plan_coco(source: CocoSource, read_blob: BlobReader, live_files: set[tuple[str, str]], policy: BoxBoundsPolicy) -> ImportPlan:
    images = {entry.path: entry.sha256 for entry in source.images}
    split = identifiers.normalize_split(source.split)
    with in_file(source.annotations.path):
        document = coco.load_coco(read_blob(source.annotations.sha256), policy=policy)
    plan = ImportPlan(categories=list(document.categories), items=[])
    lineage = Lineage(kind="real", origin=source.annotations.path)
    for index, image in enumerate(document.images):
        path = f"images[{index}]"
        sha256 = images.get(image.file_name)
        if sha256 is None:
            raise errors.FailedPrecondition(
                "IMAGE_FILE_MISSING",
                f"{source.annotations.path}: {path}.file_name {image.file_name!r} has no uploaded file; add it to the import's images",
                {"field": f"{path}.file_name", "file": source.annotations.path, "file_name": image.file_name},
            )
        item_id = plan.new_file(image.file_name, sha256, live_files)
        if item_id is None:
            continue
        item = NewItem(
            item_id=item_id,
            image=ImageInput(sha256=sha256),
            split=split,
            attributes={"coco_image_id": str(image.image_id)},
            lineage=lineage,
            annotations=image.annotations,
            file_name=image.file_name,
        )
        plan.items.append(PlannedItem(item, path, ImageSize(image.width, image.height)))
    unused = len(source.images) - len(document.images)
    if unused > 0:
        _warn(plan.warnings, f"{unused} uploaded image file(s) are not named by {source.annotations.path} and were not imported")
    return plan


# ---------------------------------------------------------------------------
# YOLO
# ---------------------------------------------------------------------------


def yolo_categories(class_names: Sequence[str]) -> list[Category]:
    categories = [Category(index + 1, name) for index, name in enumerate(class_names)]
    identifiers.validate_categories(categories, "yolo.class_names")
    return categories


def yolo_file_name(path: str, split: str) -> str:
    """The item file name of a YOLO image: its path without the layout's leading ``images/`` and
    ``{split}/`` directories, so that an export writes it back to ``images/{split}/{file_name}``."""
    parts = path.split("/")
    if len(parts) > 1 and parts[0] == "images":
        parts = parts[1:]
    if split and len(parts) > 1 and parts[0] == split:
        parts = parts[1:]
    return "/".join(parts)


def plan_yolo(source: YoloSource, read_blob: BlobReader, live_files: set[tuple[str, str]], policy: BoxBoundsPolicy) -> ImportPlan:
    categories = yolo_categories(source.class_names)
    plan = ImportPlan(categories=categories, items=[])
    for index, entry in enumerate(source.images):
        path = f"yolo.images[{index}]"
        split = identifiers.normalize_split(entry.split)
        file_name = yolo_file_name(entry.image.path, entry.split)
        item_id = plan.new_file(file_name, entry.image.sha256, live_files)
        if item_id is None:
            continue
        annotations: tuple[Annotation, ...] = ()
        if entry.labels is not None:
            with in_file(entry.image.path):
                size = image_size(read_blob(entry.image.sha256), f"{path}.image")
            boxes = yolo.parse_labels(read_blob(entry.labels.sha256), size, len(categories), entry.labels.path)
            annotations = tuple(Annotation(b.box, category_id=b.class_index + 1, score=b.score) for b in boxes)
        item = NewItem(
            item_id=item_id,
            image=ImageInput(sha256=entry.image.sha256),
            split=split,
            annotations=annotations,
            file_name=file_name,
            lineage=Lineage(kind="real", origin=entry.image.path),
        )
        plan.items.append(PlannedItem(item, path))
    return plan


# ---------------------------------------------------------------------------
# MNIST
# ---------------------------------------------------------------------------


def plan_mnist(source: MnistSource, read_blob: BlobReader, live_files: set[tuple[str, str]]) -> ImportPlan:
    split = identifiers.normalize_split(source.split)
    with in_file(source.images.path):
        images = mnist.parse_idx(read_blob(source.images.sha256), "mnist.images")
    with in_file(source.labels.path):
        labels = mnist.parse_idx(read_blob(source.labels.sha256), "mnist.labels")
    mnist.check_digits(images, labels, "mnist.images", "mnist.labels")
    chosen = mnist.stratified_subset(labels, source.limit)  # every digit when limit is 0
    used = sorted({int(label) for label in labels[chosen]})
    plan = ImportPlan(categories=[Category(label + 1, mnist.category_name(label)) for label in used], items=[])
    for index in chosen.tolist():
        png = mnist.encode_png(images[index])
        file_name = f"mnist/{index:05d}.png"
        item_id = plan.new_file(file_name, hashlib.sha256(png).hexdigest(), live_files)
        if item_id is None:
            continue
        label = int(labels[index])
        item = NewItem(
            item_id=item_id,
            image=ImageInput(data=png),
            split=split,
            attributes={"mnist_index": str(index)},
            annotations=(Annotation(ClassLabel(), category_id=label + 1, id="1"),),
            file_name=file_name,
            lineage=Lineage(kind="real", origin=source.images.path),
        )
        plan.items.append(PlannedItem(item, f"digits[{index}]", ImageSize(images.shape[2], images.shape[1])))
    return plan


def plan_import(source: ImportSource, read_blob: BlobReader, live_files: set[tuple[str, str]], policy: BoxBoundsPolicy) -> ImportPlan:
    """The plan of any source (blocking: run it in a thread)."""
    check_source(source)
    if isinstance(source, CocoSource):
        return plan_coco(source, read_blob, live_files, policy)
    if isinstance(source, YoloSource):
        return plan_yolo(source, read_blob, live_files, policy)
    return plan_mnist(source, read_blob, live_files)


def check_declared_size(planned: PlannedItem, width: int, height: int) -> None:
    """IMAGE_SIZE_MISMATCH when the source declared another size than the image has."""
    declared = planned.declared_size
    if declared is not None and (declared.width, declared.height) != (width, height):
        raise errors.InvalidArgument(
            "IMAGE_SIZE_MISMATCH",
            f"{planned.path}: the source says {planned.item.file_name!r} is {declared.width}x{declared.height}, the image is {width}x{height}",
            {"field": planned.path, "file_name": planned.item.file_name, "declared_width": declared.width, "declared_height": declared.height, "width": width, "height": height},
        )
