"""The benchmarks keep working: each runs in its quick mode and writes every figure.

Nothing here looks at a timing (speed is the benchmark's business, not the tests'); the
test fails when a benchmark crashes, or stops producing a figure the docs cite.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_annotation_store_benchmark_runs_and_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "annotation_store.py"), "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["quick"] is True
    plan = figures["plan"]
    assert figures["import"]["items"] == plan["mnist_items"]
    assert figures["stream"]["items"] == plan["mnist_items"]
    for key in ("import_items_per_s", "put_items_per_s", "ratio_import_to_put"):
        assert figures["import"][key] > 0, key
    assert figures["stream"]["ratio_stream_to_plain"] > 0
    assert figures["list"]["all"]["pages"] > 0
    assert figures["list"]["all"]["grpc_p50_ms"] > 0
    assert "ratio" in result.stdout and "Summary" in result.stdout
