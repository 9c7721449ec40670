"""The resumable iterable dataset every Simulacra source builds on, and its loader.

A source is a numbered sequence of samples (``Fetcher.get(positions)``). The
dataset deals the positions to DataLoader workers in blocks of ``block_size``
(see ``simulacra_client.positions``) and to data-parallel ranks by each
source's own sharding, and turns samples into tensors in the worker.

Resuming needs to know how many samples the training loop has *consumed*
(workers read ahead). Without workers the dataset counts what it yields; with
workers, iterate through ``ResumableLoader``, which counts the batches it hands
out and sets ``block_size`` to its batch size so that the batches arrive in
position order. ``state_dict()`` then names the next position, and a fresh
dataset given that state continues with exactly the samples that would have
come next.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from simulacra_client.positions import worker_positions

STATE_VERSION = 1


@dataclass(frozen=True)
class Connection:
    """How a worker reaches a service (picklable; each process opens its own channel)."""

    address: str
    token: str | None = None
    tls_ca: str | bytes | None = None


def lineage(
    source: str,
    *,
    item: str = "",
    version: int = 0,
    generator: str = "",
    seed: int = 0,
    index: int = -1,
    label: int = -1,
    attributes: Sequence[int] = (),
    truncation: float = 0.0,
) -> dict[str, Any]:
    """Where a sample came from, with the same keys for every source (so that mixed batches collate):
    a real ``item`` of dataset ``version``, or sample ``index`` of ``generator`` (the resolved
    version, ``models/M/versions/N``) with ``seed``, the generator's ``label`` (before any
    ``label_map``), its ``attributes`` value indices and its ``truncation`` (0.0: none; a used one
    is positive): everything the sampling service needs to draw that sample again bit for bit.
    Real samples carry label -1, no attributes and truncation 0.0. ``augmentation_seed`` is the
    augmentation request seed of an ``Augmented`` sample, -1 otherwise. ``ResumableDataset`` pads
    ``attributes`` with -1 to its ``attribute_count`` (as the attributes it yields)."""
    return {
        "source": source, "item": item, "version": version, "generator": generator, "seed": seed, "index": index,
        "label": label, "attributes": [int(v) for v in attributes], "truncation": float(truncation), "augmentation_seed": -1,
    }


@dataclass
class Sample:
    """One sample of a source: ``image`` C x H x W uint8, its ``label``, where it came from, and
    the value index of each of its generator's attributes (None: a source without attributes)."""

    image: np.ndarray
    label: int
    lineage: dict[str, Any] = field(default_factory=dict)
    attributes: Sequence[int] | None = None


class Fetcher:
    """Reads the samples at given positions of one rank's sequence. Positions only increase
    from call to call; a finite source returns fewer samples than asked once it is exhausted."""

    def get(self, positions: Sequence[int]) -> list[Sample]:
        raise NotImplementedError

    def close(self) -> None:
        """Release channels and streams."""


def current_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``(rank, world_size)``: as given, else torch.distributed's when initialised, else (0, 1)."""
    if rank is None and world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1
    rank, world_size = rank or 0, world_size or 1
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} of world_size {world_size}: need 0 <= rank < world_size")
    return rank, world_size


class ResumableDataset(IterableDataset):
    """Base of ``SyntheticDataset``, ``RealDataset`` and ``Mixed``.

    Yields ``(image, label)``, ``(image, label, attributes)`` with ``with_attributes``,
    ``(image, label, lineage)`` with ``with_lineage``, or ``(image, label, attributes, lineage)``
    with both: ``image`` a float32 C x H x W tensor in [0, 1] (uint8 with ``as_uint8``) after
    ``transform``; ``label`` an int; ``attributes`` an int64 tensor of ``attribute_count`` value
    indices (a generator's conditioning attributes, -1 for a sample that has none, e.g. a real
    one in a mix); ``lineage`` a dict of where the sample came from.
    """

    kind = "resumable"
    finite = True
    attribute_count = 0
    """How many attributes a sample carries (a generator's; 0 for real data)."""

    def __init__(
        self,
        *,
        block_size: int = 64,
        rank: int | None = None,
        world_size: int | None = None,
        with_lineage: bool = False,
        with_attributes: bool = False,
        as_uint8: bool = False,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {block_size}")
        self.block_size = block_size
        self.rank, self.world_size = current_rank(rank, world_size)
        self.with_lineage = with_lineage
        self.with_attributes = with_attributes
        self.as_uint8 = as_uint8
        self.transform = transform
        self._position = 0
        self._epoch = 0
        self._driven = False  # True while a ResumableLoader counts consumption

    # ---- what subclasses provide ------------------------------------------
    def open(self) -> Fetcher:
        """A fetcher of this rank's sequence, opened in the process that reads (a worker)."""
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed by this dataset (source, seed, filter...)."""
        raise NotImplementedError

    # ---- iteration -----------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        counting = info is None and not self._driven
        positions = worker_positions(self._position, worker, workers, self.block_size)
        fetcher = self.open()
        try:
            while True:
                wanted = [next(positions) for _ in range(self.block_size)]
                samples = fetcher.get(wanted)
                for sample in samples:
                    if counting:
                        self._position += 1
                    yield self._output(sample)
                if len(samples) < len(wanted):
                    break
        finally:
            fetcher.close()
        if counting:
            self.end_epoch()

    def _output(self, sample: Sample) -> tuple[Any, ...]:
        pixels = sample.image if sample.image.flags.writeable else sample.image.copy()
        image = torch.from_numpy(np.ascontiguousarray(pixels))
        if not self.as_uint8:
            image = image.to(torch.float32).div_(255.0)
        if self.transform is not None:
            image = self.transform(image)
        out: tuple[Any, ...] = (image, sample.label)
        values = list(sample.attributes) if sample.attributes is not None else [-1] * self.attribute_count
        if self.with_attributes:
            out += (torch.tensor(values, dtype=torch.int64),)
        if self.with_lineage:
            out += ({**sample.lineage, "attributes": values + [-1] * (self.attribute_count - len(values))},)
        return out

    # ---- resuming -------------------------------------------------------------
    def advance(self, consumed: int) -> None:
        """Count ``consumed`` samples as taken by the training loop (what ResumableLoader calls)."""
        self._position += consumed

    def end_epoch(self) -> None:
        """A finite source was read to its end: the next iteration starts over (next epoch)."""
        if self.finite:
            self._position = 0
            self._epoch += 1

    @property
    def position(self) -> int:
        """Samples of this rank's sequence consumed so far in this epoch."""
        return self._position

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_VERSION,
            "kind": self.kind,
            "position": self._position,
            "epoch": self._epoch,
            "rank": self.rank,
            "world_size": self.world_size,
            "identity": self.identity(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a ``state_dict()``; refused when it belongs to another stream."""
        expected = {"format": STATE_VERSION, "kind": self.kind, "rank": self.rank, "world_size": self.world_size, "identity": self.identity()}
        for key, value in expected.items():
            if state.get(key) != value:
                raise ValueError(f"this state belongs to another stream: its {key} is {_short(state.get(key))}, this dataset's is {_short(value)}")
        self._position = int(state["position"])
        self._epoch = int(state["epoch"])


def _short(value: Any, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _batch_size(batch: Any) -> int:
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    return len(first)


class ResumableLoader(DataLoader):
    """A DataLoader that counts what it hands out, so ``state_dict()`` resumes exactly.

    It sets the dataset's ``block_size`` to ``batch_size`` (batches then arrive in
    position order whatever ``num_workers``) and refuses the options that break
    that order (``persistent_workers``, ``in_order=False``).
    """

    def __init__(self, dataset: ResumableDataset, batch_size: int = 64, num_workers: int = 0, **kwargs: Any) -> None:
        if not isinstance(dataset, ResumableDataset):
            raise TypeError("ResumableLoader reads a SyntheticDataset, RealDataset or Mixed")
        if kwargs.get("persistent_workers") or kwargs.get("in_order") is False:
            raise ValueError("ResumableLoader needs fresh workers per epoch and batches in order (no persistent_workers, in_order=False)")
        if num_workers > 0 and "multiprocessing_context" not in kwargs and os.name == "posix":
            # Fork a process that may hold gRPC threads only through forkserver: gRPC is not fork-safe.
            kwargs["multiprocessing_context"] = "forkserver"
        dataset.block_size = batch_size
        super().__init__(dataset, batch_size=batch_size, num_workers=num_workers, **kwargs)

    def __iter__(self) -> Iterator[Any]:
        dataset: ResumableDataset = self.dataset  # type: ignore[assignment]
        dataset._driven = True
        try:
            for batch in super().__iter__():
                dataset.advance(_batch_size(batch))
                yield batch
        finally:
            dataset._driven = False
        dataset.end_epoch()

    def state_dict(self) -> dict[str, Any]:
        return self.dataset.state_dict()  # type: ignore[attr-defined]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dataset.load_state_dict(state)  # type: ignore[attr-defined]
