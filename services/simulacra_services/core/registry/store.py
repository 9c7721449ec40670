"""``ModelRegistry``: models, immutable numbered versions and aliases, kept in object storage.

The registry has no database: the shared object storage is its only state, so
that the sampling service (which has no database) reads exactly what training
wrote. Layout in ``layout.py``.

Writes go through one ``ModelRegistry`` per process and are serialised by its
lock; an alias change may carry the etag a client read (compare-and-swap), so
two people moving one alias cannot overwrite each other unseen. Version numbers
are never reused, not even after a delete. Several writer processes sharing one
bucket would need the object store's conditional writes to make the model
record's update atomic across processes; the suite runs one training service
(the only writer) per bucket.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
from collections.abc import Mapping
from typing import Any

from simulacra_services.core import errors
from simulacra_services.core.registry import layout
from simulacra_services.core.registry.names import LATEST, _echo, check_alias, check_model_id, check_version
from simulacra_services.core.registry.records import MODEL_KINDS, GeneratorSignature, ModelRecord, ModelVersionRecord
from simulacra_services.core.storage import ObjectStore

JSON = "application/json"
MAX_DESCRIPTION_CHARS = 4096
MAX_TAGS = 64
MAX_TAG_CHARS = 256


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _dump(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _check_tags(tags: Mapping[str, str] | None) -> dict[str, str]:
    tags = dict(tags or {})
    if len(tags) > MAX_TAGS or any(
        not isinstance(k, str) or not isinstance(v, str) or not k or len(k) > MAX_TAG_CHARS or len(v) > MAX_TAG_CHARS
        for k, v in tags.items()
    ):
        raise errors.InvalidArgument(
            "INVALID_TAGS",
            f"tags must be at most {MAX_TAGS} pairs of non-empty strings of at most {MAX_TAG_CHARS} characters",
            {"count": str(len(tags))},
        )
    return tags


def model_not_found(model: str) -> errors.SimulacraError:
    return errors.NotFound("MODEL_NOT_FOUND", f"the registry has no model {model!r}", {"model": f"models/{model}"})


class ModelRegistry:
    """The model registry over one object store (see the module docstring)."""

    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects
        self._lock = threading.RLock()

    # ---- models --------------------------------------------------------------
    def create_model(self, model: str, description: str = "", tags: Mapping[str, str] | None = None) -> ModelRecord:
        check_model_id(model)
        if not isinstance(description, str) or len(description) > MAX_DESCRIPTION_CHARS:
            raise errors.InvalidArgument(
                "INVALID_DESCRIPTION", f"a description is text of at most {MAX_DESCRIPTION_CHARS} characters", {}
            )
        tags = _check_tags(tags)
        with self._lock:
            if self.objects.exists(layout.model_key(model)):
                raise errors.AlreadyExists("MODEL_EXISTS", f"model {model!r} already exists", {"model": f"models/{model}"})
            now = _now()
            record = ModelRecord(model, description, {}, 0, tags, now, now)
            return self._write_model(record)

    def get_model(self, model: str) -> ModelRecord:
        check_model_id(model)
        try:
            info = self.objects.head(layout.model_key(model))
            data = self.objects.get(layout.model_key(model))
        except errors.NotFound:
            raise model_not_found(model) from None
        return ModelRecord.from_json(json.loads(data), etag=info.sha256)

    def list_models(self, after: str = "", limit: int = 100) -> list[ModelRecord]:
        """Models in name order, the first ``limit`` whose name sorts after ``after``."""
        out: list[ModelRecord] = []
        for model in self.objects.list_children(layout.PREFIX):
            if model <= after:
                continue
            try:
                out.append(self.get_model(model))
            except errors.NotFound:
                continue  # a model directory without its record (deleted meanwhile)
            if len(out) >= limit:
                break
        return out

    def delete_model(self, model: str, force: bool = False) -> None:
        with self._lock:
            self.get_model(model)
            versions = self._live_versions(model)
            if versions and not force:
                raise errors.FailedPrecondition(
                    "MODEL_HAS_VERSIONS",
                    f"model {model!r} has {len(versions)} version(s): delete them first or pass force",
                    {"model": f"models/{model}", "versions": str(len(versions))},
                )
            # version.json first in each version, the model record last: a reader never
            # sees a version without its file.
            for version in self._version_numbers(model):
                self._delete_version_objects(model, version)
            self.objects.delete(layout.model_key(model))

    # ---- versions -----------------------------------------------------------------
    def register_version(
        self,
        model: str,
        onnx: bytes,
        signature: GeneratorSignature,
        *,
        model_kind: str,
        report: Mapping[str, Any] | None = None,
        report_png: bytes | None = None,
        provenance: Mapping[str, Any] | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        description: str = "",
    ) -> ModelVersionRecord:
        """Store a new version (the model is created when missing) and return it; numbers go 1, 2, 3..."""
        check_model_id(model)
        if model_kind not in MODEL_KINDS:
            raise errors.InvalidArgument(
                "INVALID_MODEL_KIND", f"model kind {_echo(model_kind)} is not one of {', '.join(MODEL_KINDS)}", {}
            )
        if not isinstance(onnx, (bytes, bytearray)) or not onnx:
            raise errors.InvalidArgument("EMPTY_ONNX", "the ONNX file is empty", {"model": f"models/{model}"})
        tags = _check_tags(tags)
        # Fails here, before anything is written, when one of them is not plain JSON.
        _dump({"report": report or {}, "provenance": provenance or {}, "hyperparameters": hyperparameters or {}})
        with self._lock:
            try:
                current = self.get_model(model)
            except errors.NotFound:
                current = self.create_model(model, description)
            existing = self._version_numbers(model)
            version = max([current.latest_version, *existing]) + 1
            onnx_key = layout.onnx_key(model, version)
            info = self.objects.put(onnx_key, bytes(onnx))
            png_key = ""
            if report_png:
                png_key = layout.report_png_key(model, version)
                self.objects.put(png_key, report_png, content_type="image/png")
            record = ModelVersionRecord(
                model=model,
                version=version,
                onnx_key=onnx_key,
                onnx_sha256=info.sha256,
                onnx_size=info.size,
                signature=signature,
                model_kind=model_kind,
                create_time=_now(),
                report=dict(report or {}),
                report_png_key=png_key,
                provenance=dict(provenance or {}),
                hyperparameters=dict(hyperparameters or {}),
                tags=tags,
            )
            self.objects.put(layout.version_key(model, version), _dump(record.to_json()), content_type=JSON)
            self._write_model(
                ModelRecord(
                    model, current.description, current.aliases, version, current.tags, current.create_time, _now()
                )
            )
            return record

    def get_version(self, model: str, version: int) -> ModelVersionRecord:
        check_model_id(model)
        check_version(version)
        try:
            data = self.objects.get(layout.version_key(model, version))
        except errors.NotFound:
            self.get_model(model)  # MODEL_NOT_FOUND first, when that is the problem
            raise errors.NotFound(
                "MODEL_VERSION_NOT_FOUND",
                f"model {model!r} has no version {version}",
                {"model_version": f"models/{model}/versions/{version}"},
            ) from None
        return ModelVersionRecord.from_json(json.loads(data))

    def resolve(self, model: str, ref: str) -> ModelVersionRecord:
        """A version by number (``"3"``), alias (``"production"``) or ``"latest"``."""
        check_model_id(model)
        if isinstance(ref, str) and ref.isdigit():
            return self.get_version(model, int(ref))
        record = self.get_model(model)
        if ref == LATEST:
            versions = self._live_versions(model, limit=1)
            if not versions:
                raise errors.NotFound(
                    "MODEL_HAS_NO_VERSIONS", f"model {model!r} has no version yet", {"model": f"models/{model}"}
                )
            return self.get_version(model, versions[0])
        check_alias(ref)
        if ref not in record.aliases:
            raise errors.NotFound(
                "ALIAS_NOT_FOUND",
                f"model {model!r} has no alias {ref!r} (aliases: {', '.join(sorted(record.aliases)) or 'none'})",
                {"model": f"models/{model}", "alias": ref},
            )
        return self.get_version(model, record.aliases[ref])

    def list_versions(self, model: str, after_version: int | None = None, limit: int = 100) -> list[ModelVersionRecord]:
        """Versions highest first; ``after_version`` continues below that number."""
        self.get_model(model)
        out = []
        for version in reversed(self._version_numbers(model)):
            if after_version is not None and version >= after_version:
                continue
            try:
                out.append(self.get_version(model, version))
            except errors.NotFound:
                continue
            if len(out) >= limit:
                break
        return out

    def read_onnx(self, record: ModelVersionRecord) -> bytes:
        """The version's ONNX file, checked against the sha256 recorded at registration."""
        data = self.objects.get(record.onnx_key)
        actual = hashlib.sha256(data).hexdigest()
        if actual != record.onnx_sha256:
            raise errors.DataLoss(
                "ONNX_CHECKSUM_MISMATCH",
                f"the ONNX file of {record.name} does not match the sha256 recorded at registration",
                {"model_version": record.name, "expected": record.onnx_sha256, "actual": actual},
            )
        return data

    def delete_version(self, model: str, version: int) -> None:
        with self._lock:
            record = self.get_model(model)
            self.get_version(model, version)
            aliased = sorted(alias for alias, v in record.aliases.items() if v == version)
            if aliased:
                raise errors.FailedPrecondition(
                    "VERSION_HAS_ALIASES",
                    f"version {version} of {model!r} is the target of alias(es) {', '.join(aliased)}: move them first",
                    {"model_version": f"models/{model}/versions/{version}", "aliases": ",".join(aliased)},
                )
            self._delete_version_objects(model, version)

    # ---- aliases ------------------------------------------------------------------
    def set_alias(self, model: str, alias: str, version: int, expected_etag: str = "") -> ModelRecord:
        """Point ``alias`` at ``version``; with ``expected_etag``, only if the model is unchanged since it was read."""
        check_alias(alias)
        with self._lock:
            record = self._for_update(model, expected_etag)
            self.get_version(model, version)
            aliases = dict(record.aliases)
            aliases[alias] = version
            return self._write_model(
                ModelRecord(model, record.description, aliases, record.latest_version, record.tags, record.create_time, _now())
            )

    def delete_alias(self, model: str, alias: str, expected_etag: str = "") -> ModelRecord:
        check_alias(alias)
        with self._lock:
            record = self._for_update(model, expected_etag)
            if alias not in record.aliases:
                raise errors.NotFound(
                    "ALIAS_NOT_FOUND", f"model {model!r} has no alias {alias!r}", {"model": f"models/{model}", "alias": alias}
                )
            aliases = {k: v for k, v in record.aliases.items() if k != alias}
            return self._write_model(
                ModelRecord(model, record.description, aliases, record.latest_version, record.tags, record.create_time, _now())
            )

    # ---- internals ------------------------------------------------------------------
    def _for_update(self, model: str, expected_etag: str) -> ModelRecord:
        record = self.get_model(model)
        if expected_etag and expected_etag != record.etag:
            raise errors.Aborted(
                "ETAG_MISMATCH",
                f"model {model!r} changed since it was read: read it again and retry",
                {"model": f"models/{model}", "etag": record.etag},
            )
        return record

    def _write_model(self, record: ModelRecord) -> ModelRecord:
        info = self.objects.put(layout.model_key(record.model), _dump(record.to_json()), content_type=JSON)
        return ModelRecord(
            record.model, record.description, dict(record.aliases), record.latest_version, dict(record.tags),
            record.create_time, record.update_time, etag=info.sha256,
        )

    def _version_numbers(self, model: str) -> list[int]:
        """Numbers of the versions whose directory exists, ascending (a version being written may lack version.json)."""
        return sorted(int(name) for name in self.objects.list_children(layout.versions_prefix(model)) if name.isdigit())

    def _live_versions(self, model: str, limit: int | None = None) -> list[int]:
        """Numbers of the versions that exist (their version.json is there), highest first."""
        live = []
        for version in reversed(self._version_numbers(model)):
            if self.objects.exists(layout.version_key(model, version)):
                live.append(version)
                if limit is not None and len(live) >= limit:
                    break
        return live

    def _delete_version_objects(self, model: str, version: int) -> None:
        prefix = layout.version_dir(model, version)
        keys = [info.key for info in self.objects.list(prefix)]
        # version.json first: from then on the version does not exist for readers.
        keys.sort(key=lambda key: not key.endswith("/version.json"))
        for key in keys:
            try:
                self.objects.delete(key)
            except errors.NotFound:
                pass
