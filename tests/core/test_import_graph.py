"""The processes that do not train import no torch (nor the other heavy training and dataset
libraries): the annotation-store and sampling services as they start and serve, the CLI, and the
SDK. Each is checked in a fresh interpreter, so nothing an earlier test imported can hide an import.

The base install (``pip install simulacra``) has no torch at all (it is the ``training`` extra):
an import of torch in these processes would fail there, not just make them heavier.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

TRAINING_ONLY = ("torch", "torchvision", "onnx", "onnxscript", "mlxtend", "sklearn", "pandas", "matplotlib", "kornia", "albumentations")
"""Top-level modules of the ``training`` and ``datasets`` extras and the dev-only libraries."""

_REPORT = f"""
import json, sys
heavy = sorted({{name.split(".")[0] for name in sys.modules}} & set({list(TRAINING_ONLY)!r}))
print("IMPORTED " + json.dumps(heavy))
"""

_SERVE = """
import asyncio, sys
from simulacra_services.core.config import Settings
from simulacra_services.core.server import METRICS_OFF, ServiceServer
from simulacra_services.services import definition

async def main() -> None:
    settings = Settings(data_dir=sys.argv[2], log_level="WARNING")
    server = ServiceServer(definition(sys.argv[1]), settings, port=0, metrics_port=METRICS_OFF)
    await server.start()  # register(): stores, databases, pools: everything a serving process loads
    await server.stop(0.5)

asyncio.run(main())
"""

_CLI = """
import contextlib, io
from simulacra_services.cli.main import build_parser, main
parser = build_parser()
for command in parser._subparsers._group_actions[0].choices:
    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):
        main([command, "--help"])
"""


def _heavy_imports(script: str, *args: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", script + _REPORT, *args], capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("IMPORTED ")]
    return json.loads(line.removeprefix("IMPORTED "))


@pytest.mark.parametrize("service", ["annotation", "sampling"])
def test_a_serving_process_imports_no_training_library(service: str, tmp_path: Path) -> None:
    assert _heavy_imports(_SERVE, service, str(tmp_path / "data")) == []


def test_the_cli_imports_no_training_library() -> None:
    assert _heavy_imports(_CLI) == []


def test_the_sdk_imports_no_training_library() -> None:
    script = "import simulacra_client, simulacra_client.annotation_async, simulacra_client.raw\n"
    assert _heavy_imports(script) == []


def test_the_check_itself_sees_torch_when_it_is_imported() -> None:
    # Guards the guard: were the report broken, every test above would pass.
    assert _heavy_imports("import torch\n") == ["torch"]


def test_torch_is_the_training_extra_and_dev_installs_every_extra() -> None:
    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    names = lambda requirements: {r.split(";")[0].split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip() for r in requirements}  # noqa: E731
    extras = project["optional-dependencies"]
    assert not names(project["dependencies"]) & {"torch", "onnx", "mlxtend"}
    assert {"torch", "onnx"} <= names(extras["training"])
    # .ci/setup installs .[dev]: the tests need the training and datasets extras too.
    assert any(r.replace(" ", "").startswith("simulacra[") and {"training", "datasets"} <= set(r.split("[")[1].split("]")[0].split(",")) for r in extras["dev"])
