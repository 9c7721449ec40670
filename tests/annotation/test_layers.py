"""The annotation-store's layers: domain/ and persistence/ reach no protobuf or gRPC, not even
through another module of the project (the imports are followed, statically, through every
``simulacra_services`` module they reach). Protobuf lives in api/ (and the SDK) only.

The walk itself is checked on the api layer, which must be found to reach gRPC and protobuf.
"""

from __future__ import annotations

import ast
import importlib.util
from functools import cache
from pathlib import Path

import pytest

import simulacra_services
from simulacra_services.annotation import api, domain, formats, persistence

PROJECT = "simulacra_services"
FORBIDDEN = ("google.protobuf", "grpc", "grpc_health", "grpc_reflection", "simulacra_client")


def _module_file(name: str) -> Path | None:
    """The source of a ``simulacra_services`` module (a package's ``__init__``), or None if not one."""
    if not name.startswith(PROJECT):
        return None
    root = Path(simulacra_services.__file__).parent
    parts = name.split(".")[1:]
    base = root.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def _direct_imports(name: str) -> frozenset[str]:
    """Modules ``name`` imports, at any level of its source (TYPE_CHECKING blocks included)."""
    path = _module_file(name)
    assert path is not None, name
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                module = importlib.util.resolve_name("." * node.level + module, package)
            found.add(module)
            # "from package import module": the module is imported too.
            found.update(f"{module}.{alias.name}" for alias in node.names if _module_file(f"{module}.{alias.name}"))
    return frozenset(found)


def reached(start: str) -> dict[str, str]:
    """Every module reached from ``start`` by imports -> the project module that imports it first."""
    by: dict[str, str] = {}
    todo = [start]
    while todo:
        name = todo.pop()
        for imported in _direct_imports(name):
            if imported in by or imported == start:
                continue
            by[imported] = name
            if _module_file(imported) is not None:
                todo.append(imported)
    return by


def forbidden_reached(start: str) -> list[str]:
    """The forbidden modules ``start`` reaches, each with the chain of imports that leads to it."""
    by = reached(start)
    out = []
    for name in sorted(by):
        if name.startswith(FORBIDDEN) or name.endswith(("_pb2", "_pb2_grpc")):
            chain = [name]
            while chain[-1] != start:
                chain.append(by[chain[-1]])
            out.append(" <- ".join(chain))
    return out


def _modules(package: object) -> list[str]:
    root = Path(package.__file__).parent  # type: ignore[attr-defined]
    return sorted(f"{package.__name__}.{p.stem}" for p in root.glob("*.py") if p.stem != "__init__")  # type: ignore[attr-defined]


@pytest.mark.parametrize("module", _modules(domain) + _modules(persistence) + _modules(formats))
def test_domain_persistence_and_formats_reach_no_protobuf_or_grpc(module: str) -> None:
    assert forbidden_reached(module) == []


def test_the_walk_finds_protobuf_and_grpc_where_they_are() -> None:
    """The negative case: the api layer reaches both, directly and through its own modules."""
    found = forbidden_reached(f"{api.__name__}.servicer")
    assert any(chain.startswith("grpc <-") for chain in found), found
    assert any(chain.startswith("simulacra_client.api.annotation.v1 <-") for chain in found), found
    # ... and through a module in between (servicer -> convert -> protobuf's Timestamp).
    assert any(chain.endswith(f"<- {api.__name__}.convert <- {api.__name__}.servicer") for chain in found), found
