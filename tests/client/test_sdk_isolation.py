"""The SDK installs and imports on its own: grpcio, grpcio-status, protobuf and numpy, never torch."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / "clients" / "python"
ALLOWED_DISTRIBUTIONS = {"grpcio", "grpcio-status", "protobuf", "numpy"}
ALLOWED_IMPORTS = {"grpc", "grpc_status", "google", "numpy", "simulacra_client"}


def test_sdk_declares_only_the_light_dependencies() -> None:
    project = tomllib.loads((SDK / "pyproject.toml").read_text())["project"]
    names = {dep.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip() for dep in project["dependencies"]}
    assert names == ALLOWED_DISTRIBUTIONS


def test_sdk_source_imports_nothing_beyond_its_dependencies_and_the_standard_library() -> None:
    offenders = []
    for path in sorted((SDK / "simulacra_client").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top not in ALLOWED_IMPORTS and top not in sys.stdlib_module_names:
                    offenders.append(f"{path.relative_to(ROOT)}: imports {module}")
    assert offenders == []


def test_importing_every_sdk_module_loads_neither_torch_nor_the_services() -> None:
    script = (
        "import importlib, pkgutil, sys\n"
        "import simulacra_client\n"
        "for m in pkgutil.walk_packages(simulacra_client.__path__, 'simulacra_client.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'simulacra_services', 'onnxruntime'))\n"
        "print(len([m for m in sys.modules if m.startswith('simulacra_client')]), bad)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    count, bad = result.stdout.strip().split(" ", 1)
    assert int(count) > 10
    assert bad == "[]"
