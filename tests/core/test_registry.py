"""The model registry over both object stores: numbering, aliases with etags, resolution, deletes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulacra_services.core import errors
from simulacra_services.core.registry import (
    AttributeSpec,
    GeneratorSignature,
    ModelRegistry,
    ModelVersionRecord,
    parse_model_version_name,
)
from simulacra_services.core.registry import layout
from simulacra_services.core.storage import LocalObjectStore, ObjectStore, S3ObjectStore

SIGNATURE = GeneratorSignature(
    latent_dim=8, channels=1, height=28, width=28, num_classes=3,
    class_names=("zero", "one", "two"), category_ids=(10, 11, 12),
    attributes=(AttributeSpec("weather", ("clear", "fog")),),
)


@pytest.fixture(params=["local", "s3"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ModelRegistry]:
    if request.param == "local":
        store: ObjectStore = LocalObjectStore(tmp_path / "objects")
    else:
        server = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("s3_bucket")
        store = S3ObjectStore(server.endpoint, server.access_key, server.secret_key, bucket)
    with store:
        yield ModelRegistry(store)


def _register(registry: ModelRegistry, model: str = "digits", onnx: bytes = b"onnx-1", **kw: object) -> ModelVersionRecord:
    return registry.register_version(model, onnx, SIGNATURE, model_kind="gan", **kw)  # type: ignore[arg-type]


def test_versions_are_numbered_and_round_trip(registry: ModelRegistry) -> None:
    first = _register(registry, report={"fid": 12.5}, provenance={"training_job": "trainingJobs/a"}, tags={"team": "cv"})
    second = _register(registry, onnx=b"onnx-2")
    assert (first.version, second.version) == (1, 2)
    assert second.name == "models/digits/versions/2"
    again = registry.get_version("digits", 1)
    assert again == first
    assert again.signature.attributes[0].values == ("clear", "fog")
    assert again.report == {"fid": 12.5} and again.tags == {"team": "cv"}
    assert again.onnx_sha256 == hashlib.sha256(b"onnx-1").hexdigest() and again.onnx_size == 6
    assert registry.read_onnx(second) == b"onnx-2"
    assert registry.get_model("digits").latest_version == 2
    assert [v.version for v in registry.list_versions("digits")] == [2, 1]
    assert [v.version for v in registry.list_versions("digits", after_version=2)] == [1]


def test_resolve_by_number_alias_and_latest(registry: ModelRegistry) -> None:
    _register(registry)
    _register(registry, onnx=b"two")
    model = registry.set_alias("digits", "production", 1)
    assert model.aliases == {"production": 1}
    assert registry.resolve("digits", "production").version == 1
    assert registry.resolve("digits", "latest").version == 2
    assert registry.resolve("digits", "2").version == 2
    with pytest.raises(errors.NotFound) as missing:
        registry.resolve("digits", "staging")
    assert missing.value.reason == "ALIAS_NOT_FOUND"
    with pytest.raises(errors.NotFound) as no_version:
        registry.resolve("digits", "7")
    assert no_version.value.reason == "MODEL_VERSION_NOT_FOUND"
    with pytest.raises(errors.NotFound) as no_model:
        registry.resolve("faces", "latest")
    assert no_model.value.reason == "MODEL_NOT_FOUND"


def test_alias_compare_and_swap(registry: ModelRegistry) -> None:
    _register(registry)
    _register(registry, onnx=b"two")
    read = registry.get_model("digits")
    moved = registry.set_alias("digits", "production", 2, expected_etag=read.etag)
    assert moved.etag != read.etag and registry.get_model("digits").etag == moved.etag
    with pytest.raises(errors.Aborted) as stale:
        registry.set_alias("digits", "production", 1, expected_etag=read.etag)
    assert stale.value.reason == "ETAG_MISMATCH"
    assert registry.resolve("digits", "production").version == 2
    with pytest.raises(errors.NotFound) as bad_target:
        registry.set_alias("digits", "canary", 9)
    assert bad_target.value.reason == "MODEL_VERSION_NOT_FOUND"
    assert "canary" not in registry.get_model("digits").aliases
    assert registry.delete_alias("digits", "production").aliases == {}


def test_delete_version_keeps_numbers_and_refuses_aliased(registry: ModelRegistry) -> None:
    _register(registry)
    _register(registry, onnx=b"two")
    registry.set_alias("digits", "production", 2)
    with pytest.raises(errors.FailedPrecondition) as aliased:
        registry.delete_version("digits", 2)
    assert aliased.value.reason == "VERSION_HAS_ALIASES"
    registry.delete_alias("digits", "production")
    registry.delete_version("digits", 2)
    assert not registry.objects.exists(layout.onnx_key("digits", 2))
    assert [v.version for v in registry.list_versions("digits")] == [1]
    assert _register(registry, onnx=b"three").version == 3  # never reuses 2
    assert registry.resolve("digits", "latest").version == 3


def test_delete_model_needs_force_with_versions(registry: ModelRegistry) -> None:
    registry.create_model("empty")
    _register(registry)
    with pytest.raises(errors.AlreadyExists) as exists:
        registry.create_model("digits")
    assert exists.value.reason == "MODEL_EXISTS"
    with pytest.raises(errors.FailedPrecondition) as has_versions:
        registry.delete_model("digits")
    assert has_versions.value.reason == "MODEL_HAS_VERSIONS"
    assert [m.model for m in registry.list_models()] == ["digits", "empty"]
    assert [m.model for m in registry.list_models(after="digits")] == ["empty"]
    registry.delete_model("digits", force=True)
    registry.delete_model("empty")
    assert registry.list_models() == []
    assert list(registry.objects.list("registry/")) == []


def test_onnx_replaced_behind_the_registry_is_detected(registry: ModelRegistry) -> None:
    record = _register(registry)
    registry.objects.put(record.onnx_key, b"swapped")
    with pytest.raises(errors.DataLoss) as corrupt:
        registry.read_onnx(record)
    assert corrupt.value.reason == "ONNX_CHECKSUM_MISMATCH"


@pytest.mark.parametrize(
    ("call", "reason"),
    [
        (lambda r: r.create_model("Bad_Name"), "INVALID_MODEL_ID"),
        (lambda r: r.create_model("../x"), "INVALID_MODEL_ID"),
        (lambda r: r.create_model("x" * 64), "INVALID_MODEL_ID"),
        (lambda r: r.set_alias("digits", "latest", 1), "INVALID_ALIAS"),
        (lambda r: r.get_version("digits", 0), "INVALID_MODEL_VERSION"),
        (lambda r: r.register_version("digits", b"", SIGNATURE, model_kind="gan"), "EMPTY_ONNX"),
        (lambda r: r.register_version("digits", b"x", SIGNATURE, model_kind="diffusion"), "INVALID_MODEL_KIND"),
        (lambda r: r.create_model("ok", tags={"k": "v" * 300}), "INVALID_TAGS"),
    ],
)
def test_bad_input_is_refused_before_any_write(registry: ModelRegistry, call, reason: str) -> None:  # type: ignore[no-untyped-def]
    _register(registry)
    before = sorted(info.key for info in registry.objects.list("registry/"))
    with pytest.raises(errors.InvalidArgument) as refused:
        call(registry)
    assert refused.value.reason == reason
    assert len(str(refused.value)) < 500
    assert sorted(info.key for info in registry.objects.list("registry/")) == before


def test_version_names_parse() -> None:
    assert parse_model_version_name("models/digits/versions/3") == ("digits", "3")
    assert parse_model_version_name("models/digits/versions/latest") == ("digits", "latest")
    for bad in ["models/digits", "models/digits/versions/", "models/Digits/versions/1", "model/d/versions/1", "x" * 5000]:
        with pytest.raises(errors.InvalidArgument) as refused:
            parse_model_version_name(bad)
        assert len(refused.value.metadata.get("name", "")) <= 90
