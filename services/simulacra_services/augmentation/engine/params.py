"""Typed op parameters: how each is read from the JSON form, checked and written back.

A pipeline is data (the proto3 JSON form of ``PipelineSpec``). Each op declares
its parameters with these types; reading them checks every value and raises
one ``InvalidArgument`` naming the exact field (``ops[2].rotate.angle_degrees.max``)
with a stable reason:

- INVALID_PARAM_TYPE: a value of the wrong JSON type;
- PARAM_OUT_OF_RANGE: a value outside what the op accepts;
- INVALID_RANGE: a range whose min is above its max;
- EVEN_KERNEL_SIZE: a kernel size that is not odd;
- UNKNOWN_PARAM / MISSING_PARAM: a key the op does not have / must have.

Floats are rounded to float32 on reading, the precision of the protobuf
contract, so a pipeline read from JSON and the same pipeline sent over gRPC
are the same pipeline (same draws, same digest).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from simulacra_services.core import errors


def invalid(reason: str, field: str, message: str, **metadata: object) -> errors.SimulacraError:
    return errors.InvalidArgument(reason, f"{field}: {message}", {"field": field, **metadata})


def f32(value: float) -> float:
    return float(np.float32(value))


def read_float(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        # proto3 JSON writes non-finite floats as strings.
        if isinstance(value, str) and value in ("NaN", "Infinity", "-Infinity"):
            raise invalid("PARAM_OUT_OF_RANGE", field, f"must be a finite number, got {value}", value=value)
        raise invalid("INVALID_PARAM_TYPE", field, f"must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise invalid("PARAM_OUT_OF_RANGE", field, f"must be a finite number, got {value}", value=value)
    return f32(value)


def read_int(value: Any, field: str) -> int:
    # proto3 JSON writes 64-bit integers as strings; accept integral floats (1.0) as JSON libraries do.
    if isinstance(value, str) and value.lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid("INVALID_PARAM_TYPE", field, f"must be an integer, got {value!r}")
    return value


def _check_bounds(value: float, lo: float | None, hi: float | None, field: str, *, open_lo: bool = False) -> None:
    if lo is not None and (value < lo or (open_lo and value == lo)):
        bound = f"> {lo}" if open_lo else f">= {lo}"
        raise invalid("PARAM_OUT_OF_RANGE", field, f"must be {bound}, got {value}", value=value, min=lo)
    if hi is not None and value > hi:
        raise invalid("PARAM_OUT_OF_RANGE", field, f"must be <= {hi}, got {value}", value=value, max=hi)


class Param:
    """One parameter of an op."""

    required = False

    def read(self, value: Any, field: str) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def default_value(self) -> Any:
        return None

    def to_json(self, value: Any) -> Any:
        return value


@dataclass(frozen=True)
class Range(Param):
    """A closed interval {"min": a, "max": b}; a value is drawn uniformly from it per item."""

    default: tuple[float, float]
    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False

    def read(self, value: Any, field: str) -> tuple[float, float]:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = {"min": value, "max": value}
        if not isinstance(value, Mapping):
            raise invalid("INVALID_PARAM_TYPE", field, "must be a range {\"min\": a, \"max\": b} or a number")
        for key in value:
            if key not in ("min", "max"):
                raise invalid("UNKNOWN_PARAM", f"{field}.{key}", "a range has only min and max", param=key)
        # proto3 JSON omits zeros: a missing bound is 0, as in the protobuf message.
        low = read_float(value.get("min", 0.0), f"{field}.min")
        high = read_float(value.get("max", 0.0), f"{field}.max")
        _check_bounds(low, self.lo, self.hi, f"{field}.min", open_lo=self.open_lo)
        _check_bounds(high, self.lo, self.hi, f"{field}.max", open_lo=self.open_lo)
        if low > high:
            raise invalid("INVALID_RANGE", field, f"min {low} is above max {high}", min=low, max=high)
        return (low, high)

    def default_value(self) -> tuple[float, float]:
        return (f32(self.default[0]), f32(self.default[1]))

    def to_json(self, value: tuple[float, float]) -> Any:
        return {"min": value[0], "max": value[1]}


@dataclass(frozen=True)
class Float(Param):
    default: float = 0.0
    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False

    def read(self, value: Any, field: str) -> float:
        number = read_float(value, field)
        _check_bounds(number, self.lo, self.hi, field, open_lo=self.open_lo)
        return number

    def default_value(self) -> float:
        return f32(self.default)


@dataclass(frozen=True)
class Int(Param):
    default: int | None = 0
    lo: int | None = None
    hi: int | None = None
    odd_or_zero: bool = False

    @property
    def required(self) -> bool:  # type: ignore[override]
        return self.default is None

    def read(self, value: Any, field: str) -> int:
        number = read_int(value, field)
        _check_bounds(number, self.lo, self.hi, field)
        if self.odd_or_zero and number != 0 and number % 2 == 0:
            raise invalid("EVEN_KERNEL_SIZE", field, f"must be odd (or 0 to derive it), got {number}", value=number)
        return number

    def default_value(self) -> int | None:
        return self.default


@dataclass(frozen=True)
class Bool(Param):
    default: bool = False

    def read(self, value: Any, field: str) -> bool:
        if not isinstance(value, bool):
            raise invalid("INVALID_PARAM_TYPE", field, f"must be true or false, got {value!r}")
        return value

    def default_value(self) -> bool:
        return self.default


@dataclass(frozen=True)
class Choice(Param):
    """A proto enum, by its value name; the *_UNSPECIFIED name means the default."""

    choices: tuple[str, ...]
    default: str = ""

    def read(self, value: Any, field: str) -> str:
        if not isinstance(value, str):
            raise invalid("INVALID_PARAM_TYPE", field, f"must be one of {', '.join(self.choices)}, got {value!r}")
        if value.endswith("_UNSPECIFIED"):
            return self.default
        if value not in self.choices:
            raise invalid("PARAM_OUT_OF_RANGE", field, f"must be one of {', '.join(self.choices)}, got {value!r}", value=value)
        return value

    def default_value(self) -> str:
        return self.default


@dataclass(frozen=True)
class FloatList(Param):
    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    max_len: int = 4

    def read(self, value: Any, field: str) -> tuple[float, ...]:
        if not isinstance(value, (list, tuple)):
            raise invalid("INVALID_PARAM_TYPE", field, "must be a list of numbers")
        if len(value) > self.max_len:
            raise invalid("PARAM_OUT_OF_RANGE", field, f"at most {self.max_len} values, got {len(value)}", count=len(value))
        out = []
        for index, item in enumerate(value):
            number = read_float(item, f"{field}[{index}]")
            _check_bounds(number, self.lo, self.hi, f"{field}[{index}]", open_lo=self.open_lo)
            out.append(number)
        return tuple(out)

    def default_value(self) -> tuple[float, ...]:
        return ()

    def to_json(self, value: tuple[float, ...]) -> Any:
        return list(value)


@dataclass(frozen=True)
class IntList(Param):
    lo: int | None = None
    hi: int | None = None
    max_len: int = 64

    def read(self, value: Any, field: str) -> tuple[int, ...]:
        if not isinstance(value, (list, tuple)):
            raise invalid("INVALID_PARAM_TYPE", field, "must be a list of integers")
        if len(value) > self.max_len:
            raise invalid("PARAM_OUT_OF_RANGE", field, f"at most {self.max_len} values, got {len(value)}", count=len(value))
        out = []
        for index, item in enumerate(value):
            number = read_int(item, f"{field}[{index}]")
            _check_bounds(number, self.lo, self.hi, f"{field}[{index}]")
            out.append(number)
        return tuple(out)

    def default_value(self) -> tuple[int, ...]:
        return ()

    def to_json(self, value: tuple[int, ...]) -> Any:
        return list(value)


INTERPOLATIONS = ("INTERPOLATION_NEAREST", "INTERPOLATION_BILINEAR", "INTERPOLATION_BICUBIC")
BORDER_MODES = ("BORDER_MODE_CONSTANT", "BORDER_MODE_REFLECT", "BORDER_MODE_REPLICATE")


def interpolation() -> Choice:
    return Choice(INTERPOLATIONS, "INTERPOLATION_BILINEAR")


def border_mode() -> Choice:
    return Choice(BORDER_MODES, "BORDER_MODE_CONSTANT")
