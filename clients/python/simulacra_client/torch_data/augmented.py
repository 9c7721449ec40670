"""``Augmented(source, ...)``: a source's samples sent through the augmentation service.

Sample p of the augmented dataset is sample p of the source augmented with a
seed derived by the service from (``seed``, key ``"p"``): the same sample gets
the same augmentation whatever the batching, the worker split or a restart, and
a cycling source gets a fresh augmentation on each pass (its positions keep
growing). The samples of each block travel over one AugmentStream. Positions,
workers, ranks and resuming are the source's (see ``ResumableDataset``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from simulacra_client.augmentation import AugmentationClient, ItemInput, spec_of
from simulacra_client.torch_data.base import Connection, Fetcher, ResumableDataset, Sample


class _AugmentFetcher(Fetcher):
    def __init__(self, dataset: Augmented) -> None:
        self._dataset = dataset
        self._source = dataset.source.open()
        c = dataset.connection
        self._client = AugmentationClient(c.address, token=c.token, tls_ca=c.tls_ca)

    def get(self, positions: Sequence[int]) -> list[Sample]:
        samples = self._source.get(positions)
        if not samples:
            return []
        items = [ItemInput(image=np.ascontiguousarray(s.image.transpose(1, 2, 0)), key=str(p)) for s, p in zip(samples, positions)]
        out = []
        for sample, augmented in zip(samples, self._client.stream(items, self._dataset.pipeline, seed=self._dataset.seed, batch_size=64)):
            image = augmented.image
            if image.dtype != np.uint8:
                image = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
            # The request seed (the item seed the service derived from it and key "p" is a uint64,
            # which torch's collation cannot hold): with the pipeline and position it reproduces the sample.
            lineage = {**sample.lineage, "source": f"augmented-{sample.lineage.get('source', '')}", "seed": self._dataset.seed}
            out.append(Sample(np.ascontiguousarray(image.transpose(2, 0, 1)), sample.label, lineage))
        return out

    def close(self) -> None:
        self._source.close()
        self._client.close()


class Augmented(ResumableDataset):
    """``source`` (a RealDataset or SyntheticDataset) augmented by ``pipeline`` (a ``Pipeline``,
    its dict form, or a stored pipeline's name) on the augmentation service at ``address``.

    >>> from simulacra_client.augmentation import Pipeline
    >>> flips = Pipeline().add("horizontal_flip", probability=0.5)
    >>> data = Augmented(RealDataset("localhost:50051", "mnist@1", cycle=True), "localhost:50052", flips, seed=3)
    """

    kind = "augmented"

    def __init__(
        self,
        source: ResumableDataset,
        address: str,
        pipeline: Any,
        *,
        seed: int = 0,
        token: str | None = None,
        tls_ca: str | bytes | None = None,
        **options: Any,
    ) -> None:
        for option in ("as_uint8", "with_lineage", "transform", "rank", "world_size"):  # the source's, unless given
            options.setdefault(option, getattr(source, option))
        super().__init__(**options)
        self.source = source
        self.connection = Connection(address, token, tls_ca)
        self.pipeline = pipeline
        self.seed = seed
        self.finite = source.finite

    def open(self) -> Fetcher:
        return _AugmentFetcher(self)

    def identity(self) -> dict[str, Any]:
        pipeline = self.pipeline if isinstance(self.pipeline, str) else _spec_json(self.pipeline)
        return {"seed": self.seed, "pipeline": pipeline, "source": {"kind": self.source.kind, **self.source.identity()}}


def _spec_json(pipeline: Any) -> Mapping[str, Any]:
    from google.protobuf import json_format

    return json_format.MessageToDict(spec_of(pipeline))
