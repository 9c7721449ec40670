"""The benchmarks keep working: each runs in its quick mode and writes every figure.

Nothing here looks at a timing (speed is the benchmark's business, not the tests'); the
test fails when a benchmark crashes, or stops producing a figure the docs cite.
"""

from __future__ import annotations

from pathlib import Path

from tests.harness import run_quick_benchmark


def test_annotation_store_benchmark_runs_and_reports_every_figure(tmp_path: Path) -> None:
    figures, stdout = run_quick_benchmark("annotation_store.py", tmp_path)
    assert figures["quick"] is True
    plan = figures["plan"]
    assert figures["import"]["items"] == plan["mnist_items"]
    assert figures["stream"]["items"] == plan["mnist_items"]
    for key in ("import_items_per_s", "put_items_per_s", "ratio_import_to_put"):
        assert figures["import"][key] > 0, key
    assert figures["stream"]["ratio_stream_to_plain"] > 0
    assert figures["list"]["all"]["pages"] > 0
    assert figures["list"]["all"]["grpc_p50_ms"] > 0
    assert "ratio" in stdout and "Summary" in stdout
