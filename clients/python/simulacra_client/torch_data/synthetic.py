"""``SyntheticDataset``: a generator's deterministic sample stream, as a resumable torch dataset.

Sample i of (generator version, seed, class mix) is a pure function on the
sampling service (see docs/contracts.md), so the dataset reads by index. Rank r
of R reads the stream's shard r of R (the indices i with i % R == r, from
``start_index``): position p of the rank is the p-th index of that shard. Each
DataLoader worker reads its blocks of positions (see
``simulacra_client.positions``), each block one StreamSamples call
(start_index, count, shard). The generator is resolved to a version number
when the dataset is made, so that an alias that moves does not change a
resumed stream.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import numpy as np

from simulacra_client.api.common.v1 import common_pb2
from simulacra_client.api.sampling.v1 import generator_pb2 as gen_pb
from simulacra_client.api.sampling.v1 import sampling_service_pb2 as rpc
from simulacra_client.api.sampling.v1 import sampling_service_pb2_grpc as rpc_grpc
from simulacra_client.channel import open_channel
from simulacra_client.errors import from_rpc_error
from simulacra_client.torch_data.base import Connection, Fetcher, ResumableDataset, Sample, lineage

MAX_RUN = 1024
"""Most samples asked of one StreamSamples call."""


def generator_name(reference: str) -> str:
    """``models/M/versions/V`` of ``M``, ``M@V`` (a number or an alias) or the full name."""
    if reference.startswith("models/"):
        return reference if "/versions/" in reference else f"{reference}/versions/latest"
    model, _, version = reference.partition("@")
    return f"models/{model}/versions/{version or 'latest'}"


def tensor_array(tensor: common_pb2.Tensor) -> np.ndarray:
    """The uint8 array of a Tensor message (the format this dataset asks for)."""
    if tensor.dtype != common_pb2.DATA_TYPE_UINT8:
        raise ValueError(f"expected uint8 samples, the service sent dtype {tensor.dtype}")
    return np.frombuffer(tensor.data, dtype=np.uint8).reshape(tuple(tensor.shape))


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
    def __init__(self, dataset: SyntheticDataset) -> None:
        self._dataset = dataset
        c = dataset.connection
        self._channel = open_channel(c.address, token=c.token, tls_ca=c.tls_ca)
        self._stub = rpc_grpc.SamplingServiceStub(self._channel)

    def get(self, positions: Sequence[int]) -> list[Sample]:
        d = self._dataset
        samples: list[Sample] = []
        for first, count in runs(positions):
            request = rpc.StreamSamplesRequest(
                generator=d.generator, seed=d.seed, start_index=shard_index(first, d.start_index, d.rank, d.world_size), count=count,
                shard_index=d.rank, shard_count=d.world_size if d.world_size > 1 else 0,
                batch_size=min(count, d.batch_size), format=gen_pb.SAMPLE_FORMAT_UINT8,
                class_mix=gen_pb.ClassMix(weights=d.class_mix) if d.class_mix else None,
            )
            if d.truncation is not None:
                request.truncation = d.truncation
            try:
                for response in self._stub.StreamSamples(request, timeout=d.timeout):
                    images = tensor_array(response.samples)
                    for image, label, index in zip(images, response.labels, response.indices):
                        origin = lineage("synthetic", generator=response.generator, seed=d.seed, index=int(index))
                        samples.append(Sample(image, d.label_map.get(int(label), int(label)), origin))
            except grpc.RpcError as error:
                raise from_rpc_error(error) from None
        return samples

    def close(self) -> None:
        self._channel.close()


class SyntheticDataset(ResumableDataset):
    """Endless (or ``num_samples`` long) samples of ``generator`` (``MODEL``, ``MODEL@VERSION|ALIAS``
    or ``models/M/versions/V``) from ``start_index``, with ``seed`` and an optional ``class_mix``
    (label -> weight). ``label_map`` renames generator labels (e.g. into a real dataset's labels).

    >>> data = SyntheticDataset("localhost:50054", "digits@production", seed=7)
    >>> loader = ResumableLoader(data, batch_size=64, num_workers=2)
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
        self.truncation = truncation
        self.label_map = {int(k): int(v) for k, v in (label_map or {}).items()}
        self.batch_size = batch_size
        self.timeout = timeout
        self.info: gen_pb.Generator | None = None
        if resolve:
            self.info = self.describe()
            self.generator = self.info.name

    def describe(self) -> gen_pb.Generator:
        """The generator as the sampling service serves it (resolved version, shape, classes)."""
        with open_channel(self.connection.address, token=self.connection.token, tls_ca=self.connection.tls_ca) as channel:
            try:
                return rpc_grpc.SamplingServiceStub(channel).GetGenerator(rpc.GetGeneratorRequest(name=self.generator), timeout=self.timeout).generator
            except grpc.RpcError as error:
                raise from_rpc_error(error) from None

    def open(self) -> Fetcher:
        fetcher = _SampleFetcher(self)
        if self.num_samples is None:
            return fetcher
        return _Limited(fetcher, self.num_samples)

    def identity(self) -> dict[str, Any]:
        return {
            "generator": self.generator, "seed": self.seed, "start_index": self.start_index, "num_samples": self.num_samples,
            "class_mix": sorted(self.class_mix.items()), "truncation": self.truncation,
        }


class _Limited(Fetcher):
    """A fetcher that ends at ``limit`` positions."""

    def __init__(self, inner: Fetcher, limit: int) -> None:
        self._inner, self._limit = inner, limit

    def get(self, positions: Sequence[int]) -> list[Sample]:
        return self._inner.get([p for p in positions if p < self._limit])

    def close(self) -> None:
        self._inner.close()
