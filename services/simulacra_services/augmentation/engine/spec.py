"""Pipelines as data: the JSON form, its validation, canonical form and digest.

The JSON form is the proto3 JSON mapping of ``simulacra.augmentation.v1.PipelineSpec``
(snake_case field names), so a file, an SDK builder and a gRPC request all carry
the same thing::

    {"ops": [{"horizontal_flip": {}, "probability": 0.5},
             {"one_of": {"ops": [{"rotate": {"angle_degrees": {"min": -10, "max": 10}}},
                                  {"gaussian_blur": {"sigma": {"min": 0.5, "max": 1.5}}}],
                         "weights": [2, 1]}}],
     "seed_policy": "SEED_POLICY_ITEM_KEY",
     "annotation_policy": {"min_visibility": 0.3}}

``parse_spec`` checks everything and raises one precise ``InvalidArgument`` per
bad field. ``canonical`` writes a spec back with every default made explicit
and floats at float32 precision; ``digest`` is the sha256 of that canonical
JSON (sorted keys, no spaces), so two spellings of one behaviour share a
digest, and the digest never depends on protobuf's serializer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union

from simulacra_services.augmentation.engine import ops as _ops  # noqa: F401  (registers the op types)
from simulacra_services.augmentation.engine.params import f32, invalid, read_float, read_int
from simulacra_services.augmentation.engine.registry import REGISTRY, OpType

MAX_DEPTH = 8
MAX_OPS = 256
GROUPS = ("sequential", "one_of", "some_of", "random_order")
SEED_POLICIES = ("SEED_POLICY_ITEM_KEY", "SEED_POLICY_POSITION")


@dataclass(frozen=True)
class OpNode:
    op: OpType
    values: Mapping[str, Any]
    probability: float = 1.0

    @property
    def name(self) -> str:
        return self.op.name


@dataclass(frozen=True)
class GroupNode:
    mode: str  # one of GROUPS
    children: tuple[Node, ...]
    probability: float = 1.0
    weights: tuple[float, ...] = ()  # one_of
    min_count: int = 1  # some_of
    max_count: int = 1  # some_of

    @property
    def name(self) -> str:
        return self.mode


Node = Union[OpNode, GroupNode]


@dataclass(frozen=True)
class AnnotationPolicy:
    min_visibility: float = 0.0
    min_area_pixels: float = 0.0
    min_width: float = 0.0
    min_height: float = 0.0
    keep_outside_keypoints: bool = False
    drop_untransformable: bool = False


@dataclass(frozen=True)
class PipelineSpec:
    ops: tuple[Node, ...]
    seed_policy: str = "SEED_POLICY_ITEM_KEY"
    annotation_policy: AnnotationPolicy = field(default_factory=AnnotationPolicy)


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def parse_spec(data: Any, path: str = "pipeline") -> PipelineSpec:
    """Read and check the JSON form of a pipeline."""
    if not isinstance(data, Mapping):
        raise invalid("INVALID_PIPELINE", path, "a pipeline is a JSON object with an \"ops\" list")
    for key in data:
        if key not in ("ops", "seed_policy", "annotation_policy"):
            raise invalid("UNKNOWN_PARAM", f"{path}.{key}", "a pipeline has ops, seed_policy and annotation_policy", param=key)
    counter = [0]
    ops = _read_ops(data.get("ops", []), f"{path}.ops", 1, counter)
    policy = data.get("seed_policy", "SEED_POLICY_ITEM_KEY")
    if policy == "SEED_POLICY_UNSPECIFIED":
        policy = "SEED_POLICY_ITEM_KEY"
    if policy not in SEED_POLICIES:
        raise invalid("PARAM_OUT_OF_RANGE", f"{path}.seed_policy", f"must be one of {', '.join(SEED_POLICIES)}, got {policy!r}", value=policy)
    return PipelineSpec(ops=ops, seed_policy=policy, annotation_policy=_read_policy(data.get("annotation_policy", {}), f"{path}.annotation_policy"))


def _read_policy(data: Any, path: str) -> AnnotationPolicy:
    if not isinstance(data, Mapping):
        raise invalid("INVALID_PARAM_TYPE", path, "must be an object")
    values: dict[str, Any] = {}
    for key, value in data.items():
        field_path = f"{path}.{key}"
        if key in ("keep_outside_keypoints", "drop_untransformable"):
            if not isinstance(value, bool):
                raise invalid("INVALID_PARAM_TYPE", field_path, f"must be true or false, got {value!r}")
            values[key] = value
        elif key in ("min_visibility", "min_area_pixels", "min_width", "min_height"):
            number = read_float(value, field_path)
            if number < 0 or (key == "min_visibility" and number > 1):
                bound = "[0, 1]" if key == "min_visibility" else ">= 0"
                raise invalid("PARAM_OUT_OF_RANGE", field_path, f"must be {bound}, got {number}", value=number)
            values[key] = number
        else:
            raise invalid("UNKNOWN_PARAM", field_path, f"the annotation policy has no {key!r}", param=key)
    return AnnotationPolicy(**values)


def _read_ops(data: Any, path: str, depth: int, counter: list[int]) -> tuple[Node, ...]:
    if depth > MAX_DEPTH:
        raise invalid("PIPELINE_TOO_DEEP", path, f"groups nest at most {MAX_DEPTH} deep", limit=MAX_DEPTH)
    if not isinstance(data, list):
        raise invalid("INVALID_PARAM_TYPE", path, "must be a list of ops")
    return tuple(_read_node(item, f"{path}[{index}]", depth, counter) for index, item in enumerate(data))


def _read_node(data: Any, path: str, depth: int, counter: list[int]) -> Node:
    counter[0] += 1
    if counter[0] > MAX_OPS:
        raise invalid("PIPELINE_TOO_LARGE", path, f"a pipeline holds at most {MAX_OPS} ops, groups included", limit=MAX_OPS)
    if not isinstance(data, Mapping):
        raise invalid("INVALID_PARAM_TYPE", path, "an op is an object such as {\"horizontal_flip\": {}}")
    probability = 1.0
    if "probability" in data:
        probability = read_float(data["probability"], f"{path}.probability")
        if not 0.0 <= probability <= 1.0:
            raise invalid("INVALID_PROBABILITY", f"{path}.probability", f"must lie in [0, 1], got {probability}", value=probability)
    kinds = [key for key in data if key != "probability"]
    if not kinds:
        raise invalid("MISSING_OP_KIND", path, "names no op (set exactly one op kind, e.g. \"horizontal_flip\")")
    if len(kinds) > 1:
        raise invalid("MULTIPLE_OP_KINDS", f"{path}.{kinds[1]}", f"sets both {kinds[0]!r} and {kinds[1]!r}; an op has exactly one kind")
    kind = kinds[0]
    body = data[kind]
    body_path = f"{path}.{kind}"
    if body is None:
        body = {}
    if not isinstance(body, Mapping):
        raise invalid("INVALID_PARAM_TYPE", body_path, "an op's parameters are an object")
    if kind in GROUPS:
        return _read_group(kind, body, body_path, probability, depth, counter)
    if kind == "registered":
        name = body.get("name", "")
        raise invalid("UNKNOWN_OP", f"{body_path}.name", f"no op is registered under {name!r}", op=name)
    op = REGISTRY.get(kind)
    if op is None:
        raise invalid("UNKNOWN_OP", body_path, f"unknown op {kind!r}", op=kind)
    values: dict[str, Any] = {}
    for key, value in body.items():
        param = op.params.get(key)
        if param is None:
            raise invalid("UNKNOWN_PARAM", f"{body_path}.{key}", f"{kind} has no parameter {key!r}", op=kind, param=key)
        values[key] = param.read(value, f"{body_path}.{key}")
    for key, param in op.params.items():
        if key not in values:
            if param.required:
                raise invalid("MISSING_PARAM", f"{body_path}.{key}", f"{kind} needs {key}", op=kind, param=key)
            values[key] = param.default_value()
    op.check(values, body_path)
    return OpNode(op=op, values=values, probability=probability)


def _read_group(kind: str, body: Mapping[str, Any], path: str, probability: float, depth: int, counter: list[int]) -> GroupNode:
    allowed = {"sequential": ("ops",), "one_of": ("ops", "weights"), "some_of": ("ops", "min_count", "max_count"), "random_order": ("ops",)}[kind]
    for key in body:
        if key not in allowed:
            raise invalid("UNKNOWN_PARAM", f"{path}.{key}", f"{kind} has no parameter {key!r}", op=kind, param=key)
    children = _read_ops(body.get("ops", []), f"{path}.ops", depth + 1, counter)
    if not children:
        raise invalid("EMPTY_GROUP", f"{path}.ops", f"{kind} needs at least one op")
    weights: tuple[float, ...] = ()
    min_count = max_count = 1
    if kind == "one_of":
        raw = body.get("weights", [])
        if not isinstance(raw, list):
            raise invalid("INVALID_PARAM_TYPE", f"{path}.weights", "must be a list of numbers")
        if raw and len(raw) != len(children):
            raise invalid("PARAM_OUT_OF_RANGE", f"{path}.weights", f"{len(raw)} weights for {len(children)} ops", count=len(raw))
        weights = tuple(read_float(w, f"{path}.weights[{i}]") for i, w in enumerate(raw))
        for index, weight in enumerate(weights):
            if weight < 0:
                raise invalid("PARAM_OUT_OF_RANGE", f"{path}.weights[{index}]", f"must be >= 0, got {weight}", value=weight)
        if weights and sum(weights) <= 0:
            raise invalid("PARAM_OUT_OF_RANGE", f"{path}.weights", "at least one weight must be > 0")
        if not weights:
            weights = tuple(1.0 for _ in children)
    if kind == "some_of":
        min_count = read_int(body.get("min_count", 1), f"{path}.min_count")
        max_count = read_int(body.get("max_count", min_count), f"{path}.max_count")
        if not 0 <= min_count <= len(children):
            raise invalid("PARAM_OUT_OF_RANGE", f"{path}.min_count", f"must lie in [0, {len(children)}], got {min_count}", value=min_count)
        if not 0 <= max_count <= len(children):
            raise invalid("PARAM_OUT_OF_RANGE", f"{path}.max_count", f"must lie in [0, {len(children)}], got {max_count}", value=max_count)
        if min_count > max_count:
            raise invalid("INVALID_RANGE", f"{path}.min_count", f"min_count {min_count} is above max_count {max_count}")
    return GroupNode(mode=kind, children=children, probability=probability, weights=weights, min_count=min_count, max_count=max_count)


# ---------------------------------------------------------------------------
# Writing, digest
# ---------------------------------------------------------------------------


def canonical(spec: PipelineSpec) -> dict[str, Any]:
    """The JSON form with every default explicit (what the digest hashes)."""
    p = spec.annotation_policy
    return {
        "ops": [_node_json(node) for node in spec.ops],
        "seed_policy": spec.seed_policy,
        "annotation_policy": {
            "min_visibility": p.min_visibility,
            "min_area_pixels": p.min_area_pixels,
            "min_width": p.min_width,
            "min_height": p.min_height,
            "keep_outside_keypoints": p.keep_outside_keypoints,
            "drop_untransformable": p.drop_untransformable,
        },
    }


def _node_json(node: Node) -> dict[str, Any]:
    if isinstance(node, GroupNode):
        body: dict[str, Any] = {"ops": [_node_json(child) for child in node.children]}
        if node.mode == "one_of":
            body["weights"] = list(node.weights)
        if node.mode == "some_of":
            body["min_count"] = node.min_count
            body["max_count"] = node.max_count
        return {"probability": node.probability, node.mode: body}
    params = {key: node.op.params[key].to_json(value) for key, value in node.values.items()}
    return {"probability": node.probability, node.name: params}


def canonical_json(spec: PipelineSpec) -> str:
    return json.dumps(canonical(spec), sort_keys=True, separators=(",", ":"), allow_nan=False)


def digest(spec: PipelineSpec) -> str:
    """sha256 (lower-case hex) of the canonical JSON form."""
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()


def f32_or_none(value: float | None) -> float | None:
    return None if value is None else f32(value)
