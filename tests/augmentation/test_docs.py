"""docs/augmentation.md states what the code does: every op, every parameter, every proto op."""

from __future__ import annotations

from pathlib import Path

from simulacra_client.api.augmentation.v1 import pipeline_pb2
from simulacra_services.augmentation.engine.registry import REGISTRY
from simulacra_services.augmentation.engine.spec import GROUPS

PAGE = (Path(__file__).resolve().parents[2] / "docs" / "augmentation.md").read_text()


def test_every_op_and_parameter_is_documented() -> None:
    for name, op in REGISTRY.items():
        row = next((line for line in PAGE.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, f"docs/augmentation.md has no row for {name}"
        for param in op.params:
            assert f"`{param}`" in row, f"{name}.{param} is not documented"


def test_the_contract_and_the_engine_have_the_same_ops() -> None:
    kinds = {field.name for field in pipeline_pb2.Op.DESCRIPTOR.oneofs_by_name["kind"].fields}
    assert kinds == set(REGISTRY) | set(GROUPS) | {"registered"}
    for name, op in REGISTRY.items():
        message = pipeline_pb2.Op.DESCRIPTOR.fields_by_name[name].message_type
        assert set(message.fields_by_name) == set(op.params), name


def test_the_figures_are_filled_in() -> None:
    assert "FIGURES" not in PAGE
    assert "python bench/augmentation.py" in PAGE
