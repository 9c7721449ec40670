"""The bytes behind item records: pixel-map data and images, read from the blob store (in parallel for pages)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from simulacra_services.annotation.domain.model import PixelMap
from simulacra_services.annotation.domain.records import ItemRecord
from simulacra_services.annotation.persistence.blobs import BlobStore
from simulacra_services.annotation.persistence.row_codec import EncodedItem

T = TypeVar("T")


class ItemContent:
    """Reads what records point to; owns the reader threads (``close`` stops them)."""

    def __init__(self, blobs: BlobStore, *, read_threads: int) -> None:
        self.blobs = blobs
        self._read_threads = read_threads
        self._readers = ThreadPoolExecutor(read_threads, thread_name_prefix="annotation-blob-read")

    def with_pixel_data(self, record: ItemRecord) -> ItemRecord:
        """The record with the pixel maps' tensor data read from their blobs."""
        if not any(isinstance(a.geometry, PixelMap) for a in record.annotations):
            return record
        loaded = []
        for annotation in record.annotations:
            geometry = annotation.geometry
            if isinstance(geometry, PixelMap):
                annotation = dataclasses.replace(annotation, geometry=dataclasses.replace(geometry, data=self.blobs.read(geometry.sha256)))
            loaded.append(annotation)
        return dataclasses.replace(record, annotations=tuple(loaded))

    def read_image(self, record: ItemRecord) -> bytes:
        return self.blobs.read(record.image.sha256)

    def read_full(self, records: Sequence[ItemRecord]) -> list[tuple[ItemRecord, bytes]]:
        """Each record with its pixel-map data and its image bytes, read in parallel (S3 round trips overlap)."""
        return self._read_each(lambda record: (self.with_pixel_data(record), self.read_image(record)), records)

    def read_stream_entries(self, entries: Sequence[EncodedItem | ItemRecord]) -> list[tuple[EncodedItem | ItemRecord, bytes]]:
        """``read_full`` for the entries of a stream page: an encoded item needs its image bytes only."""

        def one(entry: EncodedItem | ItemRecord) -> tuple[EncodedItem | ItemRecord, bytes]:
            if isinstance(entry, EncodedItem):
                return entry, self.blobs.read(entry.image_sha256)
            return self.with_pixel_data(entry), self.read_image(entry)

        return self._read_each(one, entries)

    def _read_each(self, read: Callable[[T], tuple[T, bytes]], entries: Sequence[T]) -> list[tuple[T, bytes]]:
        def chunk(part: Sequence[T]) -> list[tuple[T, bytes]]:
            return [read(entry) for entry in part]

        # A few sequential runs side by side: enough to overlap S3 round trips, few enough
        # that thread hand-offs do not cost more than the reads of small files.
        runs = min(self._read_threads, max(1, len(entries) // 8))
        if runs == 1:
            return chunk(entries)
        parts = [entries[i::runs] for i in range(runs)]
        loaded = list(self._readers.map(chunk, parts))
        out: list[tuple[T, bytes]] = [None] * len(entries)  # type: ignore[list-item]
        for i, part in enumerate(loaded):
            out[i::runs] = part
        return out

    def close(self) -> None:
        """Stop the blob reader threads."""
        self._readers.shutdown(wait=True, cancel_futures=True)
