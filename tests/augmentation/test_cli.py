"""`simulacra augment ...` run as a user runs it: a subprocess against running services."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import albumentations as A
import cv2
import numpy as np

from simulacra_client.annotation import AnnotationClient
from tests.augmentation.conftest import Services, make_source


def cli(services: Services, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMULACRA_")}
    env.update(SIMULACRA_ANNOTATION_ADDRESS=services.annotation_address, SIMULACRA_AUGMENTATION_ADDRESS=services.augmentation_address)
    return subprocess.run([sys.executable, "-m", "simulacra_services.cli.main", "augment", *args], capture_output=True, text=True, env=env, timeout=120)


async def test_preview_run_and_rebalance(services: Services, tmp_path: Path) -> None:
    source = await asyncio.to_thread(make_source, services)
    reference = "src@" + source.rsplit("/", 1)[1]
    ours = tmp_path / "pipeline.json"
    ours.write_text(json.dumps({"ops": [{"horizontal_flip": {}}, {"rotate": {"angle_degrees": {"min": -10, "max": 10}}}]}))
    albumentations = tmp_path / "albumentations.json"
    A.save(A.Compose([A.HorizontalFlip(p=0.5), A.Affine(rotate=(-10, 10), p=1.0), A.RandomBrightnessContrast(p=0.5)]), str(albumentations), data_format="json")

    grid = tmp_path / "grid.png"
    shown = await asyncio.to_thread(cli, services, "preview", reference, "--pipeline", str(albumentations), "--out", str(grid), "--count", "4")
    assert shown.returncode == 0, shown.stderr
    picture = cv2.imread(str(grid))
    assert picture is not None and picture.shape[1] > 4 * 48

    ran = await asyncio.to_thread(cli, services, "run", reference, "--pipeline", str(ours), "--copies", "2", "--seed", "3", "--into", "grown")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "datasets/grown/versions/1"

    balanced = await asyncio.to_thread(cli, services, "rebalance", reference, "--max-imbalance", "2", "--into", "balanced")
    assert balanced.returncode == 0, balanced.stderr
    assert balanced.stdout.strip() == "datasets/balanced/versions/1"
    assert "before" in balanced.stderr and "after" in balanced.stderr

    def counts() -> tuple[int, dict[int, int]]:
        with AnnotationClient(services.annotation_address) as client:
            grown = sum(1 for _ in client.stream_items("grown@1"))
            per_class: dict[int, int] = {}
            for streamed in client.stream_items("balanced@1"):
                for annotation in streamed.item.annotations:
                    per_class[annotation.category_id] = per_class.get(annotation.category_id, 0) + 1
            return grown, per_class

    grown, per_class = await asyncio.to_thread(counts)
    assert grown == 12
    assert per_class[1] <= 2 * per_class[2]

    bad = await asyncio.to_thread(cli, services, "run", reference, "--pipeline", str(ours), "--copies", "99", "--into", "x")
    assert bad.returncode == 1 and "PARAM_OUT_OF_RANGE" in bad.stderr
    missing = await asyncio.to_thread(cli, services, "run", "src@9", "--pipeline", str(ours), "--into", "y")
    assert missing.returncode == 1 and "error:" in missing.stderr
    no_item = await asyncio.to_thread(cli, services, "preview", reference, "--pipeline", str(ours), "--out", str(tmp_path / "x.png"), "--item", "nope")
    assert no_item.returncode == 1 and no_item.stderr.startswith("error:") and "NOT_FOUND" in no_item.stderr and not (tmp_path / "x.png").exists()
    _ = np
