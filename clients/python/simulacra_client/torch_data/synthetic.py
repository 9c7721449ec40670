"""``SyntheticDataset``: a generator's deterministic sample stream, as a resumable torch dataset.

Sample i of (generator version, seed, class mix) is a pure function on the
sampling service (see docs/contracts.md), so the dataset reads by index. Rank r
of R reads the stream's shard r of R (the indices i with i % R == r, from
``start_index``): position p of the rank is the p-th index of that shard. Each
DataLoader worker reads its blocks of positions (see
``simulacra_client.positions``), each block one ``SamplingClient.stream`` call
(start_index, count, shard), which resumes by itself after UNAVAILABLE. The generator is resolved to a version number
when the dataset is made, so that an alias that moves does not change a
resumed stream.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from simulacra_client.api.sampling.v1 import generator_pb2 as gen_pb
from simulacra_client.sampling import SamplingClient, generator_name
from simulacra_client.torch_data.base import Connection, Fetcher, ResumableDataset, Sample, lineage

__all__ = ["SyntheticDataset", "generator_name", "runs", "shard_index"]

MAX_RUN = 1024
"""Most samples asked of one StreamSamples call."""


def shard_index(position: int, start_index: int, rank: int, ranks: int) -> int:
    """The sample index of a rank's ``position``: the position-th index i >= start_index with i % ranks == rank."""
    return start_index + (rank - start_index) % ranks + position * ranks


def runs(indices: Sequence[int]) -> list[tuple[int, int]]:
    """``(first, count)`` of each run of consecutive positions (count <= MAX_RUN)."""
    out: list[tuple[int, int]] = []
    for index in indices:
        if out and out[-1][0] + out[-1][1] == index and out[-1][1] < MAX_RUN:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((index, 1))
    return out


class _SampleFetcher(Fetcher):
    """Reads runs of positions with ``SamplingClient.stream`` (which reopens a stream broken by
    UNAVAILABLE at the next index, on the resolved version)."""

    def __init__(self, dataset: SyntheticDataset) -> None:
        self._dataset = dataset
        c = dataset.connection
        self._client = SamplingClient(c.address, token=c.token, tls_ca=c.tls_ca, timeout=dataset.timeout)

    def get(self, positions: Sequence[int]) -> list[Sample]:
        d = self._dataset
        options: dict[str, Any] = {
            "seed": d.seed, "format": "uint8", "class_mix": d.class_mix or None, "attribute_mix": d.attribute_mix or None, "truncation": d.truncation,
        }
        if d.world_size > 1:
            options.update(shard_index=d.rank, shard_count=d.world_size)
        samples: list[Sample] = []
        for first, count in runs(positions):
            start = shard_index(first, d.start_index, d.rank, d.world_size)
            for batch in self._client.stream(d.generator, start_index=start, count=count, batch_size=min(count, d.batch_size), **options):
                images = np.asarray(batch.samples)
                attributes = batch.attributes.tolist() if batch.attributes is not None else [None] * len(images)
                for image, label, index, values in zip(images, batch.labels, batch.indices, attributes):
                    origin = lineage(
                        "synthetic", generator=batch.generator, seed=batch.seed, index=int(index), label=int(label),
                        attributes=values or (), truncation=batch.truncation or 0.0,
                    )
                    samples.append(Sample(image, d.label_map.get(int(label), int(label)), origin, values))
        return samples

    def close(self) -> None:
        self._client.close()


class SyntheticDataset(ResumableDataset):
    """Endless (or ``num_samples`` long) samples of ``generator`` (``MODEL``, ``MODEL@VERSION|ALIAS``
    or ``models/M/versions/V``) from ``start_index``, with ``seed``, an optional ``class_mix``
    (label -> weight) and, for a generator conditioned on attributes, an optional ``attribute_mix``
    ({attribute: {value: weight}}). ``label_map`` renames generator labels (e.g. into a real
    dataset's labels). ``with_attributes=True`` adds each sample's attribute value indices (in the
    order of ``attribute_names``; see ``ResumableDataset``).

    >>> data = SyntheticDataset("localhost:50054", "digits@production", seed=7)
    >>> loader = ResumableLoader(data, batch_size=64, num_workers=2)
    >>> scenes = SyntheticDataset("localhost:50054", "scenes", attribute_mix={"weather": {"fog": 1}}, with_attributes=True)
    >>> image, label, attributes = next(iter(scenes))  # attributes[scenes.attribute_names.index("weather")] == 1
    """

    kind = "synthetic"

    def __init__(
        self,
        address: str,
        generator: str,
        *,
        seed: int = 0,
        start_index: int = 0,
        num_samples: int | None = None,
        class_mix: Mapping[int, float] | None = None,
        attribute_mix: Mapping[str, Mapping[str, float]] | None = None,
        truncation: float | None = None,
        label_map: Mapping[int, int] | None = None,
        batch_size: int = 256,
        timeout: float = 120.0,
        token: str | None = None,
        tls_ca: str | bytes | None = None,
        resolve: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if seed < 0 or start_index < 0:
            raise ValueError("seed and start_index are unsigned")
        self.connection = Connection(address, token, tls_ca)
        self.generator = generator_name(generator)
        self.seed = seed
        self.start_index = start_index
        self.num_samples = num_samples
        self.finite = num_samples is not None
        self.class_mix = {int(k): float(v) for k, v in (class_mix or {}).items()}
        self.attribute_mix = {str(a): {str(k): float(v) for k, v in w.items()} for a, w in (attribute_mix or {}).items()}
        self.truncation = truncation
        self.label_map = {int(k): int(v) for k, v in (label_map or {}).items()}
        self.batch_size = batch_size
        self.timeout = timeout
        self.info: gen_pb.Generator | None = None
        if resolve:
            self.info = self.describe()
            self.generator = self.info.name
            self.attribute_count = len(self.info.attributes)

    @property
    def attribute_names(self) -> list[str]:
        """The generator's attributes, in the order of a sample's attribute values (needs ``resolve``)."""
        return [a.name for a in self.info.attributes] if self.info is not None else []

    def describe(self) -> gen_pb.Generator:
        """The generator as the sampling service serves it (resolved version, shape, classes)."""
        c = self.connection
        with SamplingClient(c.address, token=c.token, tls_ca=c.tls_ca, timeout=self.timeout) as client:
            return client.get_generator(self.generator)

    def open(self) -> Fetcher:
        fetcher = _SampleFetcher(self)
        if self.num_samples is None:
            return fetcher
        return _Limited(fetcher, self.num_samples)

    def identity(self) -> dict[str, Any]:
        return {
            "generator": self.generator, "seed": self.seed, "start_index": self.start_index, "num_samples": self.num_samples,
            # Lists and string keys only: a state that went through JSON must still match.
            "class_mix": [[k, v] for k, v in sorted(self.class_mix.items())], "truncation": self.truncation,
            **({"attribute_mix": self.attribute_mix} if self.attribute_mix else {}),
        }


class _Limited(Fetcher):
    """A fetcher that ends at ``limit`` positions."""

    def __init__(self, inner: Fetcher, limit: int) -> None:
        self._inner, self._limit = inner, limit

    def get(self, positions: Sequence[int]) -> list[Sample]:
        return self._inner.get([p for p in positions if p < self._limit])

    def close(self) -> None:
        self._inner.close()
