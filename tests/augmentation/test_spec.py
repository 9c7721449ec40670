"""Pipelines as data: the JSON form, one precise error per bad field, the canonical digest."""

from __future__ import annotations

import pytest

from simulacra_services.augmentation.engine import canonical, digest, parse_spec
from simulacra_services.augmentation.engine.spec import MAX_DEPTH, MAX_OPS, GroupNode
from simulacra_services.core import errors


def _error(data: object) -> errors.SimulacraError:
    with pytest.raises(errors.InvalidArgument) as caught:
        parse_spec(data)
    return caught.value


@pytest.mark.parametrize(
    ("data", "reason", "field"),
    [
        ({"ops": [{"swirl": {}}]}, "UNKNOWN_OP", "pipeline.ops[0].swirl"),
        ({"ops": [{"registered": {"name": "swirl"}}]}, "UNKNOWN_OP", "pipeline.ops[0].registered.name"),
        ({"ops": [{"horizontal_flip": {}, "probability": 1.5}]}, "INVALID_PROBABILITY", "pipeline.ops[0].probability"),
        ({"ops": [{"horizontal_flip": {}, "probability": -0.1}]}, "INVALID_PROBABILITY", "pipeline.ops[0].probability"),
        ({"ops": [{"rotate": {"angle_degrees": {"min": 10, "max": -10}}}]}, "INVALID_RANGE", "pipeline.ops[0].rotate.angle_degrees"),
        ({"ops": [{"rotate": {"angle_degrees": {"min": -999, "max": 0}}}]}, "PARAM_OUT_OF_RANGE", "pipeline.ops[0].rotate.angle_degrees.min"),
        ({"ops": [{"gaussian_blur": {"kernel_size": 4}}]}, "EVEN_KERNEL_SIZE", "pipeline.ops[0].gaussian_blur.kernel_size"),
        ({"ops": [{"rotate": {"angel": 3}}]}, "UNKNOWN_PARAM", "pipeline.ops[0].rotate.angel"),
        ({"ops": [{"resize": {"height": 10}}]}, "MISSING_PARAM", "pipeline.ops[0].resize.width"),
        ({"ops": [{"resize": {"height": "ten", "width": 3}}]}, "INVALID_PARAM_TYPE", "pipeline.ops[0].resize.height"),
        ({"ops": [{"rotate": {"interpolation": "INTERPOLATION_LANCZOS"}}]}, "PARAM_OUT_OF_RANGE", "pipeline.ops[0].rotate.interpolation"),
        ({"ops": [{"horizontal_flip": {}, "vertical_flip": {}}]}, "MULTIPLE_OP_KINDS", "pipeline.ops[0].vertical_flip"),
        ({"ops": [{"probability": 0.5}]}, "MISSING_OP_KIND", "pipeline.ops[0]"),
        ({"ops": [{"one_of": {"ops": []}}]}, "EMPTY_GROUP", "pipeline.ops[0].one_of.ops"),
        ({"ops": [{"one_of": {"ops": [{"horizontal_flip": {}}], "weights": [1, 2]}}]}, "PARAM_OUT_OF_RANGE", "pipeline.ops[0].one_of.weights"),
        (
            {"ops": [{"some_of": {"ops": [{"horizontal_flip": {}}, {"vertical_flip": {}}], "min_count": 2, "max_count": 1}}]},
            "INVALID_RANGE",
            "pipeline.ops[0].some_of.min_count",
        ),
        ({"ops": [{"sequential": {"ops": [{"rotate": {"angle_degrees": {"min": 1, "max": 0}}}]}}]}, "INVALID_RANGE", "pipeline.ops[0].sequential.ops[0].rotate.angle_degrees"),
        ({"ops": [], "annotation_policy": {"min_visibility": 2}}, "PARAM_OUT_OF_RANGE", "pipeline.annotation_policy.min_visibility"),
        ({"ops": [], "seed_policy": "SEED_POLICY_RANDOM"}, "PARAM_OUT_OF_RANGE", "pipeline.seed_policy"),
        ({"ops": [{"normalize": {"mean": [0.5, 0.5], "std": [0.2]}}]}, "PARAM_OUT_OF_RANGE", "pipeline.ops[0].normalize.std"),
        ({"ops": [{"rotate": {"angle_degrees": {"min": "NaN", "max": 1}}}]}, "PARAM_OUT_OF_RANGE", "pipeline.ops[0].rotate.angle_degrees.min"),
        ({"opz": []}, "UNKNOWN_PARAM", "pipeline.opz"),
    ],
)
def test_each_bad_field_gets_its_reason_and_path(data: object, reason: str, field: str) -> None:
    error = _error(data)
    assert (error.reason, error.metadata["field"]) == (reason, field)


def test_pipeline_too_deep_and_too_large() -> None:
    nested: dict = {"horizontal_flip": {}}
    for _ in range(MAX_DEPTH):
        nested = {"sequential": {"ops": [nested]}}
    assert _error({"ops": [nested]}).reason == "PIPELINE_TOO_DEEP"
    assert _error({"ops": [{"horizontal_flip": {}}] * (MAX_OPS + 1)}).reason == "PIPELINE_TOO_LARGE"


def test_digest_ignores_spelling_of_defaults_and_sees_every_parameter() -> None:
    short = parse_spec({"ops": [{"rotate": {"angle_degrees": {"min": -10, "max": 10}}}]})
    explicit = parse_spec(
        {
            "ops": [
                {
                    "probability": 1.0,
                    "rotate": {"angle_degrees": {"min": -10.0, "max": 10.0}, "interpolation": "INTERPOLATION_UNSPECIFIED", "fill_value": 0},
                }
            ],
            "seed_policy": "SEED_POLICY_UNSPECIFIED",
        }
    )
    other = parse_spec({"ops": [{"rotate": {"angle_degrees": {"min": -10, "max": 11}}}]})
    assert digest(short) == digest(explicit)
    assert digest(short) != digest(other)
    # The canonical form reads back to the same pipeline.
    assert digest(parse_spec(canonical(short))) == digest(short)


def test_floats_are_read_at_float32_precision() -> None:
    spec = parse_spec({"ops": [{"horizontal_flip": {}, "probability": 0.1}]})
    assert spec.ops[0].probability == pytest.approx(0.1, abs=1e-8) and spec.ops[0].probability != 0.1


def test_groups_nest() -> None:
    spec = parse_spec(
        {
            "ops": [
                {
                    "one_of": {
                        "ops": [{"some_of": {"ops": [{"horizontal_flip": {}}, {"gamma": {}}], "min_count": 1, "max_count": 2}}, {"random_order": {"ops": [{"grayscale": {}}]}}],
                        "weights": [3, 1],
                    },
                    "probability": 0.5,
                }
            ]
        }
    )
    group = spec.ops[0]
    assert isinstance(group, GroupNode) and group.mode == "one_of" and group.weights == (3.0, 1.0)
    assert isinstance(group.children[0], GroupNode) and group.children[0].max_count == 2
