"""Where the registry keeps things in the shared object storage (see docs/contracts.md).

    registry/models/{model}/model.json
    registry/models/{model}/versions/{version:010d}/generator.onnx
    registry/models/{model}/versions/{version:010d}/report.png      (optional)
    registry/models/{model}/versions/{version:010d}/version.json    written last

A version exists when its ``version.json`` exists: the ONNX file and report are
written first, so a reader never sees a version whose file is missing.
"""

from __future__ import annotations

PREFIX = "registry/models/"


def model_prefix(model: str) -> str:
    return f"{PREFIX}{model}/"


def model_key(model: str) -> str:
    return f"{PREFIX}{model}/model.json"


def versions_prefix(model: str) -> str:
    return f"{PREFIX}{model}/versions/"


def version_dir(model: str, version: int) -> str:
    return f"{PREFIX}{model}/versions/{version:010d}/"


def version_key(model: str, version: int) -> str:
    return version_dir(model, version) + "version.json"


def onnx_key(model: str, version: int) -> str:
    return version_dir(model, version) + "generator.onnx"


def report_png_key(model: str, version: int) -> str:
    return version_dir(model, version) + "report.png"
