"""What a client asks for, checked against a generator's signature: precise errors, never INTERNAL.

A ``SampleSpec`` is everything that, with the generator version and the sample index, decides a
sample (seed, labels or class mix, attribute mix, truncation) plus how to encode it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from simulacra_services.core import errors
from simulacra_services.core.registry import GeneratorSignature
from simulacra_services.sampling.runtime.encode import Format, Layout

MAX_INDEX = 2**64 - 1


@dataclass(frozen=True)
class SampleSpec:
    seed: int
    class_mix: Mapping[int, float] = field(default_factory=dict)
    attribute_mix: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    truncation: float | None = None
    format: Format = Format.FLOAT32
    layout: Layout = Layout.NCHW


@dataclass(frozen=True)
class CheckedSpec:
    """A spec resolved against one signature: label keys/weights and per-attribute weights in signature order."""

    spec: SampleSpec
    class_mix: dict[int, float]
    attribute_weights: tuple[tuple[float, ...], ...]


def check_spec(spec: SampleSpec, sig: GeneratorSignature) -> CheckedSpec:
    if not 0 <= spec.seed <= MAX_INDEX:
        raise errors.InvalidArgument("INVALID_SEED", "seed must be in [0, 2^64)", {"seed": spec.seed})
    if spec.truncation is not None and not (math.isfinite(spec.truncation) and spec.truncation > 0):
        raise errors.InvalidArgument(
            "INVALID_TRUNCATION", f"truncation must be a finite number > 0, got {spec.truncation}", {"truncation": spec.truncation}
        )
    mix: dict[int, float] = {}
    if spec.class_mix:
        if not sig.conditional:
            raise errors.InvalidArgument(
                "GENERATOR_UNCONDITIONAL", "this generator takes no class labels: leave class_mix empty", {}
            )
        for label, weight in spec.class_mix.items():
            if not 0 <= label < sig.num_classes:
                raise errors.InvalidArgument(
                    "LABEL_OUT_OF_RANGE",
                    f"class_mix label {label} is outside [0, {sig.num_classes})",
                    {"label": label, "num_classes": sig.num_classes},
                )
            if not (math.isfinite(weight) and weight >= 0):
                raise errors.InvalidArgument("INVALID_CLASS_MIX", f"class_mix weight of label {label} must be >= 0", {"label": label})
            mix[int(label)] = float(weight)
        if not any(w > 0 for w in mix.values()):
            raise errors.InvalidArgument("INVALID_CLASS_MIX", "class_mix weights are all 0", {})
    names = [a.name for a in sig.attributes]
    for name in spec.attribute_mix:
        if name not in names:
            raise errors.InvalidArgument(
                "UNKNOWN_ATTRIBUTE",
                f"attribute {name[:80]!r} is not one of the generator's ({', '.join(names) or 'none'})",
                {"attribute": name[:80]},
            )
    weights = []
    for attribute in sig.attributes:
        given = spec.attribute_mix.get(attribute.name) or {}
        for value, weight in given.items():
            if value not in attribute.values:
                raise errors.InvalidArgument(
                    "UNKNOWN_ATTRIBUTE_VALUE",
                    f"{value[:80]!r} is not a value of attribute {attribute.name!r} ({', '.join(attribute.values)})",
                    {"attribute": attribute.name, "value": value[:80]},
                )
            if not (math.isfinite(weight) and weight >= 0):
                raise errors.InvalidArgument("INVALID_ATTRIBUTE_MIX", f"weight of {attribute.name}={value} must be >= 0", {"attribute": attribute.name})
        if given and not any(w > 0 for w in given.values()):
            raise errors.InvalidArgument("INVALID_ATTRIBUTE_MIX", f"weights of attribute {attribute.name!r} are all 0", {"attribute": attribute.name})
        weights.append(tuple(float(given.get(v, 0.0)) if given else 1.0 for v in attribute.values))
    if spec.format is Format.PNG and sig.channels not in (1, 2, 3, 4):
        raise errors.InvalidArgument(
            "PNG_NOT_POSSIBLE", f"PNG holds 1 to 4 channels; this generator makes {sig.channels}", {"channels": sig.channels}
        )
    return CheckedSpec(spec, mix, tuple(weights))


def check_labels(labels: Sequence[int], count: int, sig: GeneratorSignature) -> np.ndarray:
    """Explicit labels: one per sample, each within [0, num_classes)."""
    if not sig.conditional:
        raise errors.InvalidArgument("GENERATOR_UNCONDITIONAL", "this generator takes no class labels: leave labels empty", {})
    if len(labels) != count:
        raise errors.InvalidArgument(
            "LABEL_COUNT_MISMATCH", f"{len(labels)} labels for {count} samples: give one label per sample", {"labels": len(labels), "count": count}
        )
    array = np.asarray(labels, dtype=np.int64)
    bad = np.nonzero((array < 0) | (array >= sig.num_classes))[0]
    if bad.size:
        raise errors.InvalidArgument(
            "LABEL_OUT_OF_RANGE",
            f"label {int(array[bad[0]])} (sample {int(bad[0])}) is outside [0, {sig.num_classes})",
            {"label": int(array[bad[0]]), "num_classes": sig.num_classes},
        )
    return array


def check_count(count: int, limit: int, what: str = "count") -> int:
    if not 1 <= count <= limit:
        raise errors.OutOfRange(
            "COUNT_OUT_OF_RANGE", f"{what} must be within 1..{limit}, got {count}", {what: count, "limit": limit}
        )
    return count


def shard_indices(start: int, shard_index: int, shard_count: int, count: int) -> np.ndarray:
    """The next ``count`` indices i >= start with i % shard_count == shard_index (uint64), OUT_OF_RANGE past 2^64."""
    shard_count = max(shard_count, 1)
    first = start + ((shard_index - start) % shard_count)
    last = first + (count - 1) * shard_count
    if last > MAX_INDEX:
        raise errors.OutOfRange("INDEX_OUT_OF_RANGE", "sample indices end at 2^64 - 1", {"start_index": start})
    return first + np.arange(count, dtype=np.uint64) * np.uint64(shard_count)


def check_shard(shard_index: int, shard_count: int) -> None:
    if shard_count > 1 and not 0 <= shard_index < shard_count or shard_count <= 1 and shard_index != 0:
        raise errors.InvalidArgument(
            "INVALID_SHARD",
            f"shard_index must be within 0..shard_count-1 (got {shard_index} of {shard_count})",
            {"shard_index": shard_index, "shard_count": shard_count},
        )
