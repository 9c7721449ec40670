"""Checking items before they are written: everything that can fail, before any row exists.

``prepare`` validates one batch as a whole (identifiers, split, attributes,
lineage, file name, the image, every annotation), then writes the batch's
image and pixel-map blobs. Only then does the store open its single
transaction, so a rejected batch leaves no row behind; blobs written for it
are unreferenced and harmless (see blobs.py).
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from simulacra_services.annotation.domain import codec, identifiers, names, shapes, validation
from simulacra_services.annotation.domain.model import Annotation, BoxBoundsPolicy, Category, ImageSize, PixelMap, PixelMapKind
from simulacra_services.annotation.domain.records import LINEAGE_KINDS, ImageInfo, ImageInput, ItemBody, Lineage, NewItem
from simulacra_services.annotation.persistence.blobs import MAX_IMAGE_PIXELS, SHA256_HEX, BlobStore, check_sha256, inspect_image
from simulacra_services.core import errors
from simulacra_services.core.budget import PixelBudget
from simulacra_services.core.db.idempotency import check_request_id  # noqa: F401 (re-exported: the one rule)

MAX_ITEMS_PER_BATCH = 256
MAX_LINEAGE_CHARS = 1024
MAX_LINEAGE_SOURCES = 64
PINNED_VERSION_NAME = names.NamePattern(
    "datasets/{dataset}/versions/{version}", dataset=names.DATASET_ID, version=names.VERSION_NUMBER
).regex
"""A version by number (lineage pins sources to versions that never change)."""


@dataclass(frozen=True, kw_only=True)
class PreparedItem(ItemBody):
    """An item checked and ready to insert: its image and pixel maps are stored blobs."""

    index: int  # position in the caller's list, for error paths
    path: str  # e.g. "items[3]"
    item_id: str
    content_sha256: str


def _invalid(reason: str, field: str, message: str, **metadata: object) -> errors.SimulacraError:
    return errors.InvalidArgument(reason, f"{field}: {message}", {"field": field, **metadata})


def check_lineage(lineage: Lineage, field: str) -> Lineage:
    if lineage.kind not in ("", *LINEAGE_KINDS):
        raise _invalid("INVALID_LINEAGE", f"{field}.kind", f"unknown lineage kind {lineage.kind!r}")
    for name in ("origin", "source_item", "pipeline_digest", "generator"):
        value = getattr(lineage, name)
        if len(value) > MAX_LINEAGE_CHARS or not value.isprintable():
            raise _invalid("INVALID_LINEAGE", f"{field}.{name}", f"at most {MAX_LINEAGE_CHARS} printable characters", limit=MAX_LINEAGE_CHARS)
    if lineage.kind == "augmented":
        if lineage.source_item and not names.WORKING_ITEM_NAME.fullmatch(lineage.source_item):
            raise _invalid("INVALID_LINEAGE", f"{field}.augmented.source_item", "must be an item name datasets/{dataset}/items/{item}")
        if lineage.pipeline_digest and not SHA256_HEX.fullmatch(lineage.pipeline_digest):
            raise _invalid("INVALID_LINEAGE", f"{field}.augmented.pipeline_digest", "must be a lower-case hex sha256")
    if len(lineage.sources) > MAX_LINEAGE_SOURCES or len(lineage.attributes) > MAX_LINEAGE_SOURCES:
        raise _invalid("INVALID_LINEAGE", f"{field}.sources", f"at most {MAX_LINEAGE_SOURCES} sources and attributes", limit=MAX_LINEAGE_SOURCES)
    for index, (item, version) in enumerate(lineage.sources):
        if not names.WORKING_ITEM_NAME.fullmatch(item):
            raise _invalid("INVALID_LINEAGE", f"{field}.augmented.sources[{index}].item", "must be an item name datasets/{dataset}/items/{item}")
        if not PINNED_VERSION_NAME.fullmatch(version) or version.split("/")[:2] != item.split("/")[:2]:
            raise _invalid(
                "INVALID_LINEAGE", f"{field}.augmented.sources[{index}].version",
                "must be a version datasets/{dataset}/versions/{number} of the item's dataset",
            )
    if lineage.truncation is not None and not (math.isfinite(lineage.truncation) and lineage.truncation > 0):
        raise _invalid("INVALID_LINEAGE", f"{field}.synthetic.truncation", "must be a positive finite number", value=lineage.truncation)
    for name in ("seed", "generator_version", "sample_index", "copy_index"):
        value = getattr(lineage, name)
        if not 0 <= value < 2**64:
            raise _invalid("INVALID_LINEAGE", f"{field}.{name}", "out of range", value=value)
    return lineage


def content_digest(
    item_id: str,
    image: ImageInfo,
    split: str,
    attributes: Mapping[str, str],
    lineage: Lineage,
    annotations: Sequence[Annotation],
    file_name: str,
) -> str:
    """sha256 of an item's canonical content: equal digests, equal items."""
    document = {
        "item_id": item_id,
        "image": image.sha256,
        "split": split,
        "attributes": dict(attributes),
        "lineage": lineage.to_json(),
        "file_name": file_name,
        "annotations": [codec.annotation_to_json(a) for a in annotations],
    }
    return codec.sha256_hex(codec.canonical_json(document))


def check_annotations(
    annotations: Sequence[Annotation],
    image: ImageInfo,
    categories: Mapping[int, Category],
    policy: BoxBoundsPolicy,
    path: str,
    pending_blobs: dict[str, bytes],
    blobs: BlobStore,
) -> tuple[Annotation, ...]:
    """Validate, assign ids, and move pixel-map data into ``pending_blobs`` (by sha256).

    A pixel map may also name a stored blob instead of carrying its tensor
    (what a BASIC read returns, sent back by an update): the blob must exist
    and hold exactly the bytes that shape and dtype need.
    """
    checked = validation.validate_annotations(
        annotations, ImageSize(image.width, image.height), categories, policy=policy, path=path
    )
    out = []
    for index, annotation in enumerate(validation.assign_annotation_ids(checked)):
        geometry = annotation.geometry
        if isinstance(geometry, PixelMap) and geometry.data is not None:
            sha256 = codec.sha256_hex(geometry.data)
            pending_blobs[sha256] = geometry.data
            annotation = dataclasses.replace(annotation, geometry=dataclasses.replace(geometry, data=None, sha256=sha256))
        elif isinstance(geometry, PixelMap):
            _check_stored_pixel_map(geometry, image, categories, blobs, f"{path}[{index}].pixel_map.blob")
        out.append(annotation)
    return tuple(out)


def _check_stored_pixel_map(
    geometry: PixelMap, image: ImageInfo, categories: Mapping[int, Category], blobs: BlobStore, field: str
) -> None:
    check_sha256(geometry.sha256, f"{field}.sha256")
    expected = math.prod(geometry.shape) * geometry.dtype.itemsize
    try:
        size = blobs.size(geometry.sha256, f"{field}.sha256")
    except errors.NotFound as error:
        raise errors.FailedPrecondition(error.reason, error.message, error.metadata) from None
    if size != expected:
        raise _invalid(
            "INVALID_PIXEL_MAP", f"{field}.sha256", f"the blob holds {size} bytes, shape and dtype need {expected}",
            size=size, expected=expected,
        )
    if geometry.map_kind is PixelMapKind.SEMANTIC_SEGMENTATION:  # its values must be known category ids
        data = blobs.read(geometry.sha256, f"{field}.sha256")
        shapes.check_pixel_map(
            dataclasses.replace(geometry, data=data), ImageSize(image.width, image.height), categories, field
        )


def resolve_image(
    image: ImageInput, blobs: BlobStore, field: str, *, max_pixels: int = MAX_IMAGE_PIXELS, budget: PixelBudget | None = None
) -> tuple[ImageInfo, bytes | None]:
    """Decode and check the image; the bytes to store (None when already a stored blob)."""
    if image.data:
        info = inspect_image(image.data, f"{field}.data", max_pixels=max_pixels, budget=budget)
        if image.sha256 and image.sha256 != info.sha256:
            raise errors.DataLoss(
                "SHA256_MISMATCH",
                f"{field}.sha256: the image bytes hash to {info.sha256}, not to the given {image.sha256}",
                {"field": f"{field}.sha256", "expected": image.sha256, "actual": info.sha256},
            )
        return info, image.data
    if not image.sha256:
        raise _invalid("MISSING_IMAGE", field, "give the image bytes (data) or the sha256 of an uploaded blob")
    check_sha256(image.sha256, f"{field}.sha256")
    try:
        data = blobs.read(image.sha256, f"{field}.sha256")
    except errors.NotFound as error:
        raise errors.FailedPrecondition(error.reason, error.message, error.metadata) from None
    return inspect_image(data, f"{field}.sha256", max_pixels=max_pixels, budget=budget), None


def prepare(
    items: Sequence[NewItem],
    categories: Mapping[int, Category],
    blobs: BlobStore,
    *,
    policy: BoxBoundsPolicy,
    path: str = "items",
    first_index: int = 0,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    decode_budget: PixelBudget | None = None,
) -> list[PreparedItem]:
    """Check every item, then store the blobs; raise on the first problem (naming item and field).

    ``max_image_pixels``: the server's image size limit (IMAGE_TOO_MANY_PIXELS above it);
    ``decode_budget``: the process's bound on pixels decoded at once."""
    prepared: list[PreparedItem] = []
    pending_blobs: dict[str, bytes] = {}
    seen_ids: dict[str, int] = {}
    for offset, item in enumerate(items):
        index = first_index + offset
        field = f"{path}[{index}]"
        try:
            item_id = item.item_id
            if item_id:
                identifiers.validate_item_id(item_id, f"{field}.item_id")
            else:
                item_id = uuid.uuid4().hex
            if item_id in seen_ids:
                raise _invalid(
                    "DUPLICATE_ITEM_ID", f"{field}.item_id", f"item id {item_id!r} appears twice in the batch", item_id=item_id
                )
            seen_ids[item_id] = index
            split = identifiers.normalize_split(item.split, f"{field}.split")
            identifiers.validate_attributes(item.attributes, f"{field}.attributes")
            if item.file_name:
                identifiers.validate_relative_path(item.file_name, f"{field}.file_name")
            lineage = check_lineage(item.lineage, f"{field}.lineage")
            image, data = resolve_image(item.image, blobs, f"{field}.image", max_pixels=max_image_pixels, budget=decode_budget)
            if data is not None:
                pending_blobs[image.sha256] = data
            annotations = check_annotations(
                item.annotations, image, categories, policy, f"{field}.annotations", pending_blobs, blobs
            )
        except errors.SimulacraError as error:
            error.metadata.setdefault("item_index", str(index))
            raise
        attributes = dict(sorted(item.attributes.items()))
        prepared.append(
            PreparedItem(
                index=index,
                path=field,
                item_id=item_id,
                image=image,
                split=split,
                attributes=attributes,
                lineage=lineage,
                annotations=annotations,
                file_name=item.file_name,
                content_sha256=content_digest(item_id, image, split, attributes, lineage, annotations, item.file_name),
            )
        )
    store_blobs(blobs, list(pending_blobs.values()))
    return prepared


def store_blobs(blobs: BlobStore, contents: Sequence[bytes], threads: int = 8) -> None:
    """Write blobs side by side: against S3 each one costs round trips, not bandwidth."""
    if len(contents) <= 2:
        for data in contents:
            blobs.put(data)
        return
    with ThreadPoolExecutor(min(threads, len(contents)), thread_name_prefix="annotation-blob-write") as pool:
        for _ in pool.map(blobs.put, contents):
            pass
