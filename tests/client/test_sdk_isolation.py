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
# The optional extra `simulacra-client[torch]`: only its package may import torch and Pillow.
TORCH_PACKAGE = SDK / "simulacra_client" / "torch_data"
TORCH_EXTRA_IMPORTS = {"torch", "PIL"}
# Every module of the SDK but the torch extra (walk_packages would import torch_data to walk it).
IMPORT_ALL_BUT_TORCH_DATA = (
    "import importlib, pathlib\n"
    "root = pathlib.Path(simulacra_client.__file__).parent\n"
    "for f in sorted(root.rglob('*.py')):\n"
    "    parts = f.relative_to(root.parent).with_suffix('').parts\n"
    "    if 'torch_data' not in parts:\n"
    "        importlib.import_module('.'.join(parts[:-1] if parts[-1] == '__init__' else parts))\n"
)


def test_sdk_declares_only_the_light_dependencies() -> None:
    project = tomllib.loads((SDK / "pyproject.toml").read_text())["project"]
    names = {dep.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip() for dep in project["dependencies"]}
    assert names == ALLOWED_DISTRIBUTIONS
    extras = project["optional-dependencies"]
    assert set(extras) == {"torch"}
    assert {dep.split(">")[0].split("=")[0].split("<")[0].strip() for dep in extras["torch"]} == {"torch", "pillow"}


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
            allowed = ALLOWED_IMPORTS | (TORCH_EXTRA_IMPORTS if TORCH_PACKAGE in path.parents else set())
            for module in modules:
                top = module.split(".")[0]
                if top not in allowed and top not in sys.stdlib_module_names:
                    offenders.append(f"{path.relative_to(ROOT)}: imports {module}")
    assert offenders == []


def test_importing_every_sdk_module_loads_neither_torch_nor_the_services() -> None:
    script = (
        "import importlib, pkgutil, sys\n"
        "import simulacra_client\n"
        f"{IMPORT_ALL_BUT_TORCH_DATA}"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'simulacra_services', 'onnxruntime'))\n"
        "print(len([m for m in sys.modules if m.startswith('simulacra_client')]), bad)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    count, bad = result.stdout.strip().split(" ", 1)
    assert int(count) > 10
    assert bad == "[]"


def test_without_torch_the_sdk_works_and_the_torch_extra_says_how_to_install_it() -> None:
    """torch and PIL made unimportable: the base SDK (every module but torch_data) still imports
    and runs, and importing simulacra_client.torch_data names the extra to install."""
    script = (
        "import importlib, pkgutil, sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'PIL'):\n"
        "            raise ImportError(f'blocked {name}')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import simulacra_client\n"
        "from simulacra_client.positions import MixSchedule\n"
        "assert MixSchedule(0.25).taken(8) == (6, 2)\n"
        f"{IMPORT_ALL_BUT_TORCH_DATA}"
        "try:\n"
        "    import simulacra_client.torch_data\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "simulacra_client.torch_data needs PyTorch and Pillow: pip install 'simulacra-client[torch]'"


def test_the_torch_extra_imports_torch_only_when_asked_for() -> None:
    script = (
        "import sys, simulacra_client\n"
        "assert 'torch' not in sys.modules\n"
        "from simulacra_client.torch_data import SyntheticDataset, RealDataset, mix\n"
        "print('torch' in sys.modules, 'simulacra_services' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.split() == ["True", "False"]
