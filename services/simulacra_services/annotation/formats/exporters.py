"""COCO and YOLO exports of a dataset version, written as blobs.

An exporter takes the version's categories, is fed its items in chunks (so an
export job can report progress and stop between chunks) and finally writes
its files as content-addressed blobs. The result lists every file of the
exported directory (path, sha256, size); the client downloads each with
ReadBlob. Images are listed with the sha256 they are already stored under:
exporting them copies nothing.

Layouts:

- COCO: ``annotations.json`` + ``images/{file_name}``. COCO image ids are the
  items' ``coco_image_id`` attributes when every exported item has a distinct
  positive one (an imported COCO file keeps its ids), and the images are then
  sorted by that id (not the file's original order, which is not stored);
  else they are numbered 1..N in item id order.
  Annotations are merged per instance as ``coco.to_coco`` describes; kinds
  COCO cannot hold are counted as skipped.
- YOLO: ``data.yaml`` (class names; categories sorted by id are classes
  0..N-1) + ``images/{split}/{file_name}`` + ``labels/{split}/{stem}.txt``
  (boxes only; an item without boxes gets no label file, which YOLO reads
  as "no objects").

An item without a file name is exported as ``{item_id}.png``/``.jpg``; two
items with the same file name are told apart by adding the item id to the
second one's name.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from simulacra_services.annotation.domain.model import AnnotationKind, Box, Category, ImageSize
from simulacra_services.annotation.domain.records import ItemRecord, ItemSlice
from simulacra_services.annotation.formats import coco, yolo
from simulacra_services.annotation.formats.import_run import JobContext

BlobWriter = Callable[[bytes], str]
"""Store bytes as a blob, return its sha256 (``store.blobs.put``)."""

_EXTENSIONS = {"png": ".png", "jpeg": ".jpg"}
_MAX_COCO_ID = 2**63 - 1


@dataclass(frozen=True)
class ExportFile:
    path: str
    sha256: str
    size_bytes: int


@dataclass
class ExportOutput:
    files: list[ExportFile] = field(default_factory=list)
    items_exported: int = 0
    annotations_exported: int = 0
    skipped: Counter[AnnotationKind] = field(default_factory=Counter)


class _FileNames:
    """Unique, safe file names for the exported items."""

    def __init__(self) -> None:
        self._taken: set[tuple[str, str]] = set()

    def name_of(self, record: ItemRecord, directory: str = "") -> str:
        """A name unique within ``directory`` (YOLO: per split; COCO: one directory)."""
        name = record.file_name or f"{record.item_id}{_EXTENSIONS.get(record.image.format, '')}"
        if (directory, name) in self._taken:
            path = PurePosixPath(name)
            name = str(path.with_name(f"{path.stem}__{record.item_id}{path.suffix}"))
        self._taken.add((directory, name))
        return name


def _put(put_blob: BlobWriter, path: str, data: bytes) -> ExportFile:
    return ExportFile(path, put_blob(data), len(data))


class CocoExporter:
    """``annotations.json`` and the images of a version."""

    def __init__(self, categories: Sequence[Category], *, skip_images: bool = False) -> None:
        self.categories = list(categories)
        self.skip_images = skip_images
        self.output = ExportOutput()
        self._names = _FileNames()
        self._images: list[tuple[int | None, str, ItemRecord]] = []

    def add(self, records: Sequence[ItemRecord]) -> None:
        for record in records:
            file_name = self._names.name_of(record)
            self._images.append((_coco_image_id(record), file_name, record))
            if not self.skip_images:
                self.output.files.append(ExportFile(f"images/{file_name}", record.image.sha256, record.image.size_bytes))
            self.output.items_exported += 1

    def finish(self, put_blob: BlobWriter) -> ExportOutput:
        ids = [candidate for candidate, _, _ in self._images]
        keep = all(i is not None for i in ids) and len(set(ids)) == len(ids)
        if keep:  # sorted by COCO image id (items arrive in item id order)
            self._images.sort(key=lambda entry: entry[0] or 0)
        images = [
            coco.CocoImage(
                image_id=candidate if keep and candidate is not None else number,
                file_name=file_name,
                width=record.image.width,
                height=record.image.height,
                annotations=tuple(record.annotations),
            )
            for number, (candidate, file_name, record) in enumerate(self._images, start=1)
        ]
        document, counts = coco.to_coco(self.categories, images)
        self.output.annotations_exported = counts.annotations_exported
        self.output.skipped = Counter(counts.skipped)
        data = json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
        self.output.files.insert(0, _put(put_blob, "annotations.json", data))
        return self.output


def _coco_image_id(record: ItemRecord) -> int | None:
    value = record.attributes.get("coco_image_id", "")
    if value.isdigit() and not value.startswith("0") and int(value) <= _MAX_COCO_ID:
        return int(value)
    return None


class YoloExporter:
    """``data.yaml``, images and label files of a version (boxes only)."""

    def __init__(self, categories: Sequence[Category], *, skip_images: bool = False) -> None:
        self.categories = list(categories)
        self.skip_images = skip_images
        self.output = ExportOutput()
        self._classes = yolo.class_indices(self.categories)
        self._names = _FileNames()
        self._splits: set[str] = set()

    def add(self, records: Sequence[ItemRecord], put_blob: BlobWriter) -> None:
        for record in records:
            split = record.split or "train"
            self._splits.add(split)
            file_name = self._names.name_of(record, split)
            boxes = []
            for annotation in record.annotations:
                if isinstance(annotation.geometry, Box) and annotation.category_id in self._classes:
                    boxes.append(yolo.YoloBox(self._classes[annotation.category_id], annotation.geometry, annotation.score))
                else:
                    self.output.skipped[annotation.kind] += 1
            if not self.skip_images:
                self.output.files.append(ExportFile(f"images/{split}/{file_name}", record.image.sha256, record.image.size_bytes))
            if boxes:
                labels = yolo.format_labels(boxes, ImageSize(record.image.width, record.image.height))
                stem = str(PurePosixPath(file_name).with_suffix(".txt"))
                self.output.files.append(_put(put_blob, f"labels/{split}/{stem}", labels))
            self.output.items_exported += 1
            self.output.annotations_exported += len(boxes)

    def finish(self, put_blob: BlobWriter) -> ExportOutput:
        data = yolo.format_data_yaml(yolo.class_names(self.categories), self._splits)
        self.output.files.insert(0, _put(put_blob, "data.yaml", data))
        return self.output


def run_export(
    store: Any,
    context: JobContext,
    version: int,
    format: str,
    *,
    filter: str = "",
    skip_images: bool = False,
    chunk_size: int = 256,
) -> ExportOutput:
    """Export ``version`` of the context's dataset as ``format`` ("COCO" or "YOLO"), chunk by chunk.

    Runs in a job's worker thread; ``store`` is the ``AnnotationStore``.
    Items are read in item id order, ``chunk_size`` at a time, with a
    checkpoint (cancel, stop) and a progress report between chunks.
    """
    dataset_id = context.dataset_id
    categories = store.list_categories(dataset_id, version)
    total = store.count_items(dataset_id, version, filter)
    exporter: CocoExporter | YoloExporter
    exporter = CocoExporter(categories, skip_images=skip_images) if format == "COCO" else YoloExporter(categories, skip_images=skip_images)
    context.progress(0, total, f"exporting {total} items", force=True)
    done, last = 0, ""
    while True:
        context.checkpoint("export", done // chunk_size)
        page = store.item_page(dataset_id, version, ItemSlice(filter, after_item_id=last), limit=chunk_size)
        if not page:
            break
        if isinstance(exporter, CocoExporter):
            exporter.add(page)
        else:
            exporter.add(page, store.blobs.put)
        done += len(page)
        last = page[-1].item_id
        context.progress(done, total, f"exported {done} of {total} items")
        if len(page) < chunk_size:
            break
    context.checkpoint("finish", 0)
    return exporter.finish(store.blobs.put)
