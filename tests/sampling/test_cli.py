"""`simulacra sample` and `simulacra generators load|unload` against a real sampling service."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simulacra_client.api.sampling.v1 import generator_pb2 as gen_pb
from tests.sampling.conftest import Sampling
from tests.sampling.generators import SCENES
from tests.sampling.test_service import array


async def simulacra(sampling: Sampling, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a child process (run from a thread, so this test's loop keeps serving)."""
    env = {**os.environ, "SIMULACRA_SAMPLING_ADDRESS": sampling.server.address}  # type: ignore[union-attr]
    command = [sys.executable, "-m", "simulacra_services.cli.main", *args]
    return await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, timeout=120)


async def test_sample_writes_a_grid_or_files_with_lineage(sampling: Sampling, tmp_path: Path) -> None:
    sampling.register("digits")
    reference = array((await sampling.sample("models/digits/versions/1", 10, seed=3, start_index=4, format=gen_pb.SAMPLE_FORMAT_UINT8)).samples)

    result = await simulacra(sampling, "sample", "digits", "--count", "10", "--seed", "3", "--start-index", "4", "--batch-size", "4", "--out", str(tmp_path / "grid.png"))
    assert result.returncode == 0, result.stderr
    assert "10 samples of models/digits/versions/1" in result.stdout
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (3 * 8 + 2 * 2, 4 * 8 + 3 * 2)  # 4 columns, 3 rows, 2-pixel gaps
    assert np.array_equal(grid[10:18, 10:18], reference[5, 0])  # sample 5: row 1, column 1
    assert np.array_equal(grid[20:28, 10:18], reference[9, 0])  # sample 9: row 2, column 1

    result = await simulacra(sampling, "sample", "digits@1", "--count", "5", "--seed", "3", "--start-index", "4", "--out", str(tmp_path / "files"))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in (tmp_path / "files" / "samples.jsonl").read_text().splitlines()]
    assert [r["index"] for r in lines] == [4, 5, 6, 7, 8] and {r["generator"] for r in lines} == {"models/digits/versions/1"}
    for k, record in enumerate(lines):
        image = np.asarray(Image.open(io.BytesIO((tmp_path / "files" / record["file"]).read_bytes())))
        assert np.array_equal(image, reference[k, 0]) and record["seed"] == 3

    for record in lines:
        assert (record["truncation"], record["attributes"]) == (None, []) and 0 <= record["label"] < 10

    # A generator with attributes, labels and truncation: each line draws its sample again, PNG byte for byte.
    sampling.register("scenes", SCENES)
    result = await simulacra(sampling, "sample", "scenes", "--count", "6", "--seed", "5", "--label", "1", "--label", "3", "--truncation", "0.7", "--out", str(tmp_path / "scenes"))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in (tmp_path / "scenes" / "samples.jsonl").read_text().splitlines()]
    assert {r["label"] for r in lines} <= {1, 3} and len({tuple(r["attributes"]) for r in lines}) > 1
    for record in lines:
        assert record["generator"] == "models/scenes/versions/1" and record["truncation"] == pytest.approx(0.7)
        fixed = [gen_pb.AttributeMix(name=a.name, weights={a.values[v]: 1.0}) for a, v in zip(SCENES.attributes, record["attributes"])]
        again = await sampling.sample(
            record["generator"], 1, seed=record["seed"], start_index=record["index"], labels=[record["label"]],
            attribute_mix=fixed, truncation=record["truncation"], format=gen_pb.SAMPLE_FORMAT_PNG,
        )
        assert again.images[0] == (tmp_path / "scenes" / record["file"]).read_bytes()

    missing = await simulacra(sampling, "sample", "nope", "--count", "2", "--out", str(tmp_path / "x.png"))
    assert missing.returncode == 1 and "MODEL_NOT_FOUND" in missing.stderr and "Traceback" not in missing.stderr


async def test_generators_load_and_unload(sampling: Sampling) -> None:
    sampling.register("digits")
    sampling.registry.set_alias("digits", "production", 1)
    loaded = await simulacra(sampling, "generators", "load", "digits@production", "--pin")
    assert loaded.returncode == 0, loaded.stderr
    assert "loaded models/digits/versions/1 on CPUExecutionProvider, pinned (aliases: production)" in loaded.stdout
    unloaded = await simulacra(sampling, "generators", "unload", "digits@1")
    assert unloaded.returncode == 0 and "unloaded models/digits/versions/1" in unloaded.stdout
    bad = await simulacra(sampling, "generators", "load", "digits@nope")
    assert bad.returncode == 1 and "ALIAS_NOT_FOUND" in bad.stderr
