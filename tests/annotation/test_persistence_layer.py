"""The annotation-store's persistence layer on its own: repositories composed without the facade,
the row helpers staging builds on, and the layer's imports (no protobuf, no gRPC, no facade)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from simulacra_services.annotation import persistence
from simulacra_services.annotation.domain.model import Annotation, Category, ClassLabel
from simulacra_services.annotation.domain.records import ImageInput, NewItem
from simulacra_services.annotation.persistence import rows
from simulacra_services.annotation.persistence.blobs import BlobStore
from simulacra_services.annotation.persistence.categories import CategoryRepository
from simulacra_services.annotation.persistence.content import ItemContent
from simulacra_services.annotation.persistence.datasets import DatasetRepository
from simulacra_services.annotation.persistence.item_reads import ItemReader
from simulacra_services.annotation.persistence.item_writes import ItemWriter
from simulacra_services.annotation.persistence.statistics import StatisticsRepository
from simulacra_services.annotation.persistence.versions import VersionRepository
from simulacra_services.core import db, errors
from simulacra_services.core.storage import LocalObjectStore

from .conftest import png

PERSISTENCE = Path(persistence.__file__).parent


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = db.create_engine(database_url)
    db.migrate(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def _item(item_id: str, category_id: int, seed: int) -> NewItem:
    return NewItem(image=ImageInput(data=png(8, 8, seed=seed)), item_id=item_id, annotations=(Annotation(ClassLabel(), category_id=category_id),))


def test_repositories_compose_without_the_facade(engine: Engine, tmp_path: Path) -> None:
    content = ItemContent(BlobStore(LocalObjectStore(tmp_path / "objects")), read_threads=1)
    reader = ItemReader(engine, content)
    writer = ItemWriter(engine, content.blobs, reader, max_image_pixels=10_000, decode_budget=None)
    versions = VersionRepository(engine)
    try:
        DatasetRepository(engine).create("plain", categories=[Category(0, "cat"), Category(0, "dog")])
        assert [c.category_id for c in CategoryRepository(engine).list("plain")] == [1, 2]
        assert writer.write_batch("plain", [_item("a", 1, 1), _item("b", 2, 2)]).item_ids == ["a", "b"]
        version, created = versions.commit("plain")
        assert created and version.version == 1 and version.item_count == 2
        with engine.connect() as conn:  # what staging uses to digest a staged version
            dataset = rows.dataset_row(conn, "plain")
            assert rows.content_digest(conn, dataset.id, version.seq) == version.content_sha256
        assert writer.delete_many("plain", ["a", "missing"]) == 1
        assert (reader.count("plain"), reader.count("plain", 1)) == (1, 2)
        assert [r.item_id for r in reader.iter("plain", "latest")] == ["a", "b"]
        statistics = StatisticsRepository(engine).compute("plain", 1)
        assert statistics.item_count == 2
        with pytest.raises(errors.NotFound) as caught:
            reader.get("plain", "a")
        assert caught.value.reason == "ITEM_NOT_FOUND"
        assert versions.commit("plain")[0].version == 2
    finally:
        content.close()


def test_row_helpers_raise_the_stable_reasons(engine: Engine) -> None:
    DatasetRepository(engine).create("empty")
    with engine.connect() as conn:
        with pytest.raises(errors.NotFound) as caught:
            rows.dataset_row(conn, "absent")
        assert caught.value.reason == "DATASET_NOT_FOUND"
        with pytest.raises(errors.NotFound) as caught:
            rows.state(conn, "empty", "latest")
        assert caught.value.reason == "VERSION_NOT_FOUND"
        assert rows.insert_items(conn, []) == []
        assert rows.categories_at(conn, rows.dataset_row(conn, "empty").id, None) == []


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("module", sorted(p.name for p in PERSISTENCE.glob("*.py")))
def test_persistence_imports_no_protobuf_grpc_or_facade(module: str) -> None:
    forbidden = ("google.protobuf", "grpc", "simulacra_client", "simulacra_services.annotation.persistence.store",
                 "simulacra_services.annotation.api.servicer", "simulacra_services.annotation.api.wire", "torch")
    bad = sorted(name for name in _imports(PERSISTENCE / module) if name.startswith(forbidden) or name.endswith("_pb2"))
    assert bad == [], f"annotation/persistence/{module} imports {bad}"
