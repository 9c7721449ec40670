"""``mix(real, synthetic, ratio=..., balance=...)``: two sources interleaved deterministically.

Step t of the mix reads the synthetic source when floor((t + 1) * ratio) >
floor(t * ratio) (see ``simulacra_client.positions.MixSchedule``), else the
real one, each at its own next position: after n steps exactly floor(n * ratio)
samples are synthetic, in every worker split and after every restart. The mix
ends when either source ends (a finite real dataset ends its pass) or after
``num_samples`` steps; give the real source ``cycle=True`` to read it several
times within one mix.

``balance=True`` asks the synthetic source for the classes the real selection
lacks: its class mix becomes each class's deficit to the largest class (from
the annotation-store's statistics), and the ratio, unless given, the share of
samples that closes the gaps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from simulacra_client.positions import MixSchedule
from simulacra_client.torch_data.base import Fetcher, ResumableDataset, Sample
from simulacra_client.torch_data.real import RealDataset


class _MixFetcher(Fetcher):
    def __init__(self, mixed: Mixed) -> None:
        self._mixed = mixed
        self._fetchers = [mixed.sources[0].open(), mixed.sources[1].open()]

    def get(self, positions: Sequence[int]) -> list[Sample]:
        limit = self._mixed.num_samples
        if limit is not None:
            positions = [p for p in positions if p < limit]
        plan = [self._mixed.schedule.at(step) for step in positions]
        fetched = []
        for source in (0, 1):
            wanted = [position for s, position in plan if s == source]
            fetched.append(iter(self._fetchers[source].get(wanted)) if wanted else iter(()))
        samples: list[Sample] = []
        for source, _ in plan:
            sample = next(fetched[source], None)
            if sample is None:  # that source ended: the mix ends here
                break
            samples.append(sample)
        return samples

    def close(self) -> None:
        for fetcher in self._fetchers:
            fetcher.close()


class Mixed(ResumableDataset):
    """Two resumable datasets interleaved with ``ratio`` = the share of the second.

    Samples come out as the first source's options say (``as_uint8``, ``with_lineage``,
    ``with_attributes``, ``transform``) unless given here; the sources' own transforms are not
    applied. With attributes, the samples of a source without them carry -1 for each of the
    other source's attributes (so that batches collate).
    """

    kind = "mixed"

    def __init__(self, first: ResumableDataset, second: ResumableDataset, *, ratio: float, num_samples: int | None = None, **options: Any) -> None:
        for source in (first, second):
            if isinstance(source, Mixed):
                raise ValueError("mix two plain sources (a Mixed cannot be mixed again)")
            if (source.rank, source.world_size) != (first.rank, first.world_size):
                raise ValueError("both sources must belong to the same rank and world size")
        for option in ("as_uint8", "with_lineage", "with_attributes", "transform"):  # the sources' output options, unless given
            options.setdefault(option, getattr(first, option))
        options.setdefault("rank", first.rank)
        options.setdefault("world_size", first.world_size)
        super().__init__(**options)
        self.sources = (first, second)
        self.attribute_count = max(first.attribute_count, second.attribute_count)
        self.schedule = MixSchedule(ratio)
        self.num_samples = num_samples
        self.finite = num_samples is not None or first.finite or second.finite

    def open(self) -> Fetcher:
        return _MixFetcher(self)

    def identity(self) -> dict[str, Any]:
        return {
            "ratio": [self.schedule.ratio.numerator, self.schedule.ratio.denominator],
            "num_samples": self.num_samples,
            "sources": [{"kind": s.kind, **s.identity()} for s in self.sources],
        }

    def counters(self) -> dict[str, int]:
        """Samples taken from each source so far in this epoch."""
        first, second = self.schedule.taken(self._position)
        return {self.sources[0].kind if self.sources[0].kind != self.sources[1].kind else "first": first,
                self.sources[1].kind if self.sources[0].kind != self.sources[1].kind else "second": second}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "taken": self.counters()}


def balance_weights(counts: Sequence[int]) -> tuple[dict[int, float], int]:
    """Per-label deficits to the largest class (the synthetic class mix) and their total."""
    if not counts or max(counts) <= 0:
        raise ValueError("balance needs a real selection with labelled items")
    top = max(counts)
    deficits = {label: float(top - count) for label, count in enumerate(counts) if top > count}
    return deficits, int(sum(deficits.values()))


def mix(
    real: ResumableDataset,
    synthetic: ResumableDataset,
    *,
    ratio: float | None = None,
    balance: bool = False,
    num_samples: int | None = None,
    **options: Any,
) -> Mixed:
    """Interleave ``real`` and ``synthetic``; ``ratio`` is the synthetic share (0..1).

    With ``balance`` (the real source must be a RealDataset, or an Augmented RealDataset,
    and the synthetic one a SyntheticDataset), synthetic samples are drawn for the real selection's missing
    classes; ``ratio`` defaults to deficit / (items + deficit).
    """
    if balance:
        counted = real if isinstance(real, RealDataset) else getattr(real, "source", None)  # Augmented(RealDataset(...))
        if not isinstance(counted, RealDataset) or not hasattr(synthetic, "class_mix"):
            raise ValueError("balance needs a RealDataset (or an Augmented one) and a SyntheticDataset")
        counts = counted.class_counts()
        weights, deficit = balance_weights(counts)
        if weights:
            inverse = {v: k for k, v in getattr(synthetic, "label_map", {}).items()}
            synthetic.class_mix = {inverse.get(label, label): weight for label, weight in weights.items()}
        if ratio is None:
            ratio = deficit / (sum(counts) + deficit) if deficit else 0.0
    if ratio is None:
        raise ValueError("give a ratio (the synthetic share), or balance=True")
    return Mixed(real, synthetic, ratio=ratio, num_samples=num_samples, **options)
