"""``Augmented(source, ...)``: a source's samples sent through the augmentation service.

Sample p of the augmented dataset is sample p of the source augmented with a
seed derived by the service from (``seed``, key ``"p"``): the same sample gets
the same augmentation whatever the batching, the worker split or a restart, and
a cycling source gets a fresh augmentation on each pass (its positions keep
growing). The samples of each block travel over one AugmentStream. Positions,
workers, ranks and resuming are the source's (see ``ResumableDataset``).

With ``in_process=True`` no service is asked: the augmentation engine runs in
the reading process (each DataLoader worker) with the same item seeds, so the
samples are byte for byte those of the stream. The engine is part of the full
``simulacra`` package, not of ``simulacra-client``; it is imported only when an
in-process dataset is made (the SDK never imports server code otherwise).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from simulacra_client.augmentation import AugmentationClient, ItemInput, spec_of
from simulacra_client.torch_data.base import Connection, Fetcher, ResumableDataset, Sample


ENGINE = "simulacra_services.augmentation.engine"
"""The augmentation engine's module (full ``simulacra`` package), imported by name for in-process mode."""


def load_engine() -> Any:
    """The augmentation engine module, or an ImportError that says what to install."""
    try:
        return importlib.import_module(ENGINE)
    except ImportError as error:
        raise ImportError(
            "Augmented(..., in_process=True) runs the augmentation engine in this process, which needs the full "
            "simulacra package (pip install simulacra, or the repository's services/); simulacra-client alone "
            "augments through the augmentation service: give its address instead"
        ) from error


class _LocalAugmenter:
    """What AugmentStream does with a request's items, in this process: the pipeline's spec read as
    the service reads it, each item's seed from (request seed, key, stream position)."""

    def __init__(self, pipeline: Any) -> None:
        from google.protobuf import json_format

        engine = load_engine()
        data = json_format.MessageToDict(spec_of(pipeline), preserving_proto_field_name=True)
        self._augmenter = engine.Augmenter(engine.parse_spec(data, "pipeline"), {})
        self._item = engine.Item

    def stream(self, items: Sequence[ItemInput], pipeline: Any, *, seed: int, batch_size: int) -> list[Any]:
        out = []
        for position, item in enumerate(items):
            engine_item = self._item(image=item.image, key=item.key)
            out.append(self._augmenter.run(engine_item, self._augmenter.item_seed(seed, item.key, position), f"items[{position}]"))
        return out

    def close(self) -> None:
        pass


class _AugmentFetcher(Fetcher):
    def __init__(self, dataset: Augmented) -> None:
        self._dataset = dataset
        self._source = dataset.source.open()
        c = dataset.connection
        self._client: Any = _LocalAugmenter(dataset.pipeline) if dataset.in_process else AugmentationClient(c.address, token=c.token, tls_ca=c.tls_ca)

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
            # which torch's collation cannot hold): with the pipeline and position it reproduces the
            # augmentation. The source's lineage (a generator's seed among it) is kept as it was.
            lineage = {**sample.lineage, "source": f"augmented-{sample.lineage.get('source', '')}", "augmentation_seed": self._dataset.seed}
            out.append(Sample(np.ascontiguousarray(image.transpose(2, 0, 1)), sample.label, lineage, sample.attributes))
        return out

    def close(self) -> None:
        self._source.close()
        self._client.close()


class Augmented(ResumableDataset):
    """``source`` (a RealDataset or SyntheticDataset) augmented by ``pipeline`` (a ``Pipeline``,
    its dict form, or a stored pipeline's name) on the augmentation service at ``address``,
    or, with ``in_process=True`` (``address`` may then be None), in this process by the
    augmentation engine: the same bytes, no service, but the full simulacra package installed.

    >>> from simulacra_client.augmentation import Pipeline
    >>> flips = Pipeline().add("horizontal_flip", probability=0.5)
    >>> data = Augmented(RealDataset("localhost:50051", "mnist@1", cycle=True), "localhost:50052", flips, seed=3)
    >>> local = Augmented(RealDataset("localhost:50051", "mnist@1", cycle=True), None, flips, seed=3, in_process=True)
    """

    kind = "augmented"

    def __init__(
        self,
        source: ResumableDataset,
        address: str | None,
        pipeline: Any,
        *,
        seed: int = 0,
        in_process: bool = False,
        token: str | None = None,
        tls_ca: str | bytes | None = None,
        **options: Any,
    ) -> None:
        for option in ("as_uint8", "with_lineage", "with_attributes", "transform", "rank", "world_size"):  # the source's, unless given
            options.setdefault(option, getattr(source, option))
        super().__init__(**options)
        if in_process:
            if isinstance(pipeline, str) and pipeline.startswith("pipelines/"):
                raise ValueError(f"in process, give the pipeline itself (a Pipeline or its dict form), not the stored {pipeline!r}")
            _LocalAugmenter(pipeline)  # fails here, not in a DataLoader worker, without the engine or with a bad pipeline
        elif not address:
            raise ValueError("give the augmentation service's address, or in_process=True")
        self.in_process = in_process
        self.source = source
        self.connection = Connection(address or "", token, tls_ca)
        self.pipeline = pipeline
        self.seed = seed
        self.finite = source.finite
        self.attribute_count = source.attribute_count

    def open(self) -> Fetcher:
        return _AugmentFetcher(self)

    def identity(self) -> dict[str, Any]:
        pipeline = self.pipeline if isinstance(self.pipeline, str) else _spec_json(self.pipeline)
        return {"seed": self.seed, "pipeline": pipeline, "source": {"kind": self.source.kind, **self.source.identity()}}


def _spec_json(pipeline: Any) -> Mapping[str, Any]:
    from google.protobuf import json_format

    return json_format.MessageToDict(spec_of(pipeline))
