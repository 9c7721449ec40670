"""``RealDataset``: the items of an annotation-store version, as a resumable torch dataset.

Each rank reads its own shard of the version's item stream (StreamItems with
``shard_index = rank``, ``shard_count = world_size``: the server's stable hash of
the item id, so ranks are disjoint and together complete). Within a rank,
position p is the p-th item of that shard's stream, whose order never changes
for a committed version; DataLoader workers each read the stream and decode
only the images of their own positions.

The label of an item is the index, in category-id order, of the category of
its first class-label annotation (its first annotation when none is a class
label); items without annotations get ``unlabelled`` (default -1).
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from simulacra_client.annotation import AnnotationClient, StreamedItem, version_name
from simulacra_client.torch_data.base import Connection, Fetcher, ResumableDataset, Sample, lineage


def decode_image(data: bytes) -> np.ndarray:
    """C x H x W uint8 of PNG/JPEG bytes (grey images get one channel, others three)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB" if image.mode not in ("1", "I", "I;16", "F") else "L")
        pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None] if pixels.ndim == 2 else np.ascontiguousarray(pixels.transpose(2, 0, 1))


def split_filter(split: str | None, filter: str) -> str:
    """The StreamItems filter of a split and an extra filter (both optional)."""
    parts = []
    if split:
        if not split.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"{split!r} is not a split name")
        parts.append(f'split = "{split}"')
    if filter:
        parts.append(f"({filter})")
    return " AND ".join(parts)


class _ItemFetcher(Fetcher):
    def __init__(self, dataset: RealDataset) -> None:
        self._dataset = dataset
        self._client = AnnotationClient(dataset.connection.address, token=dataset.connection.token, tls_ca=dataset.connection.tls_ca)
        categories = sorted(c.category_id for c in self._client.list_categories(dataset.version))
        self._labels = {category: index for index, category in enumerate(categories)}
        self._stream: Iterator[StreamedItem] | None = None
        self._next = 0  # stream position of the next item the stream yields
        self._offset = 0  # positions before the current pass (cycling)
        self._length: int | None = None

    def _open_stream(self) -> None:
        d = self._dataset
        shard_count = d.world_size if d.world_size > 1 else 0
        self._stream = iter(
            self._client.stream_items(d.version, filter=d.filter, shard_index=d.rank if shard_count else 0, shard_count=shard_count)
        )
        self._next = self._offset

    def get(self, positions: Sequence[int]) -> list[Sample]:
        samples: list[Sample] = []
        for position in positions:
            item = self._item_at(position)
            if item is None:
                break
            samples.append(self._sample(item))
        return samples

    def _item_at(self, position: int) -> Any:
        if self._stream is None:
            self._open_stream()
        while True:
            streamed = next(self._stream, None)  # type: ignore[arg-type]
            if streamed is None:
                self._length = self._next - self._offset
                if not self._dataset.cycle or self._length == 0:
                    return None
                self._offset = self._next
                self._open_stream()
                continue
            self._next += 1
            if self._next - 1 == position:
                return streamed.item

    def _sample(self, item: Any) -> Sample:
        label = self._dataset.unlabelled
        chosen = next((a for a in item.annotations if a.WhichOneof("kind") == "class_label"), None)
        chosen = chosen or (item.annotations[0] if item.annotations else None)
        if chosen is not None:
            label = self._labels.get(chosen.category_id, self._dataset.unlabelled)
        return Sample(decode_image(item.image.data), label, lineage("real", item=item.name, version=int(item.version)))

    def close(self) -> None:
        self._stream = None
        self._client.close()


class RealDataset(ResumableDataset):
    """The items of ``reference`` (``NAME@VERSION`` or ``datasets/NAME/versions/N``; a number,
    not ``latest``, so that a resumed run reads the same items), optionally one ``split``
    and an AIP-160 ``filter`` (ListItems syntax). ``cycle``: start over at the end, endlessly.

    >>> data = RealDataset("localhost:50051", "mnist@1", split="train")
    >>> loader = ResumableLoader(data, batch_size=64, num_workers=2)
    """

    kind = "real"

    def __init__(
        self,
        address: str,
        reference: str,
        *,
        split: str | None = None,
        filter: str = "",
        cycle: bool = False,
        unlabelled: int = -1,
        token: str | None = None,
        tls_ca: str | bytes | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.version = version_name(reference)
        if self.version.endswith("/versions/latest"):
            raise ValueError(f"{reference!r}: name a version number (NAME@N), so that a resumed run reads the same items")
        self.connection = Connection(address, token, tls_ca)
        self.filter = split_filter(split, filter)
        self.cycle = cycle
        self.finite = not cycle
        self.unlabelled = unlabelled

    def open(self) -> Fetcher:
        return _ItemFetcher(self)

    def identity(self) -> dict[str, Any]:
        return {"version": self.version, "filter": self.filter, "cycle": self.cycle}

    def class_counts(self) -> list[int]:
        """Items per label (index in category-id order) of the whole selection, all ranks together
        (the annotation-store's statistics of the version under the filter)."""
        with AnnotationClient(self.connection.address, token=self.connection.token, tls_ca=self.connection.tls_ca) as client:
            statistics = client.statistics(self.version, filter=self.filter)
        return [int(c.item_count) for c in sorted(statistics.categories, key=lambda c: c.category_id)]


def to_tensors(dataset: ResumableDataset, **loader_options: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sample of a finite dataset as two tensors (images N x C x H x W, labels N)."""
    from simulacra_client.torch_data.base import ResumableLoader

    images, labels = [], []
    for batch in ResumableLoader(dataset, **{"batch_size": 256, **loader_options}):
        images.append(batch[0])
        labels.append(batch[1])
    if not images:
        raise ValueError("the dataset is empty")
    return torch.cat(images), torch.cat(labels)

