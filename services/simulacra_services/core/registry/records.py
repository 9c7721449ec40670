"""What the model registry stores: plain records and their JSON form (no protobuf, no torch).

The JSON written to object storage is the registry's on-disk format: the
sampling service (and any other reader) decodes it with ``*.from_json``. Fields
are only ever added, with defaults, so that old records stay readable.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FORMAT_VERSION = 1
"""Written into every record; a reader refuses a record from a newer format."""

MODEL_KINDS = ("vae", "gan", "enhanced_gan", "imported")


def _time(value: dt.datetime) -> str:
    return value.astimezone(dt.timezone.utc).isoformat()


def _parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


@dataclass(frozen=True)
class AttributeSpec:
    """One categorical attribute a generator is conditioned on, e.g. ``weather`` in (clear, fog, rain).

    The ONNX input ``attributes[:, j]`` holds the index into ``values`` of attribute j.
    """

    name: str
    values: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "values": list(self.values)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AttributeSpec:
        return cls(name=str(data["name"]), values=tuple(str(v) for v in data["values"]))


@dataclass(frozen=True)
class GeneratorSignature:
    """The fixed ONNX signature of a generator, with its sizes.

    inputs ``z`` float32 [N, latent_dim], ``labels`` int64 [N] and, only when
    ``attributes`` is not empty, ``attributes`` int64 [N, len(attributes)];
    output ``samples`` float32 [N, channels, height, width] in [-1, 1].
    """

    latent_dim: int
    channels: int
    height: int
    width: int
    num_classes: int = 0
    class_names: tuple[str, ...] = ()
    category_ids: tuple[int, ...] = ()
    attributes: tuple[AttributeSpec, ...] = ()
    onnx_opset: int = 17

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def to_json(self) -> dict[str, Any]:
        return {
            "latent_dim": self.latent_dim,
            "channels": self.channels,
            "height": self.height,
            "width": self.width,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "category_ids": list(self.category_ids),
            "attributes": [a.to_json() for a in self.attributes],
            "onnx_opset": self.onnx_opset,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GeneratorSignature:
        return cls(
            latent_dim=int(data["latent_dim"]),
            channels=int(data["channels"]),
            height=int(data["height"]),
            width=int(data["width"]),
            num_classes=int(data.get("num_classes", 0)),
            class_names=tuple(str(n) for n in data.get("class_names", ())),
            category_ids=tuple(int(i) for i in data.get("category_ids", ())),
            attributes=tuple(AttributeSpec.from_json(a) for a in data.get("attributes", ())),
            onnx_opset=int(data.get("onnx_opset", 17)),
        )


@dataclass(frozen=True)
class ModelRecord:
    """A named model: its aliases and the number of its latest version."""

    model: str
    description: str
    aliases: Mapping[str, int]
    latest_version: int
    tags: Mapping[str, str]
    create_time: dt.datetime
    update_time: dt.datetime
    etag: str = ""
    """SHA-256 of the stored record; pass it back to make an alias change conditional."""

    @property
    def name(self) -> str:
        return f"models/{self.model}"

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "model": self.model,
            "description": self.description,
            "aliases": dict(sorted(self.aliases.items())),
            "latest_version": self.latest_version,
            "tags": dict(sorted(self.tags.items())),
            "create_time": _time(self.create_time),
            "update_time": _time(self.update_time),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], etag: str = "") -> ModelRecord:
        _check_format(data)
        return cls(
            model=str(data["model"]),
            description=str(data.get("description", "")),
            aliases={str(k): int(v) for k, v in data.get("aliases", {}).items()},
            latest_version=int(data.get("latest_version", 0)),
            tags={str(k): str(v) for k, v in data.get("tags", {}).items()},
            create_time=_parse_time(data["create_time"]),
            update_time=_parse_time(data["update_time"]),
            etag=etag,
        )


@dataclass(frozen=True)
class ModelVersionRecord:
    """One immutable version of a model: its ONNX file, signature, report and provenance."""

    model: str
    version: int
    onnx_key: str
    onnx_sha256: str
    onnx_size: int
    signature: GeneratorSignature
    model_kind: str
    create_time: dt.datetime
    report: Mapping[str, Any] = field(default_factory=dict)
    """The quality report as JSON (empty when none was measured)."""
    report_png_key: str = ""
    provenance: Mapping[str, Any] = field(default_factory=dict)
    """training_job, checkpoint, dataset_version, git_revision, ... as the writer knows them."""
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"models/{self.model}/versions/{self.version}"

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "model": self.model,
            "version": self.version,
            "onnx_key": self.onnx_key,
            "onnx_sha256": self.onnx_sha256,
            "onnx_size": self.onnx_size,
            "signature": self.signature.to_json(),
            "model_kind": self.model_kind,
            "create_time": _time(self.create_time),
            "report": dict(self.report),
            "report_png_key": self.report_png_key,
            "provenance": dict(self.provenance),
            "hyperparameters": dict(self.hyperparameters),
            "tags": dict(sorted(self.tags.items())),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelVersionRecord:
        _check_format(data)
        return cls(
            model=str(data["model"]),
            version=int(data["version"]),
            onnx_key=str(data["onnx_key"]),
            onnx_sha256=str(data["onnx_sha256"]),
            onnx_size=int(data["onnx_size"]),
            signature=GeneratorSignature.from_json(data["signature"]),
            model_kind=str(data["model_kind"]),
            create_time=_parse_time(data["create_time"]),
            report=dict(data.get("report", {})),
            report_png_key=str(data.get("report_png_key", "")),
            provenance=dict(data.get("provenance", {})),
            hyperparameters=dict(data.get("hyperparameters", {})),
            tags={str(k): str(v) for k, v in data.get("tags", {}).items()},
        )


def _check_format(data: Mapping[str, Any]) -> None:
    fmt = data.get("format", 1)
    if not isinstance(fmt, int) or fmt > FORMAT_VERSION:
        from simulacra_services.core import errors

        raise errors.FailedPrecondition(
            "UNSUPPORTED_REGISTRY_FORMAT",
            f"registry record has format {fmt!r}; this version of Simulacra reads formats up to {FORMAT_VERSION}: upgrade it",
            {"format": str(fmt)[:40]},
        )
