"""bench/augmentation.py keeps working: it runs in quick mode and reports every figure the docs cite.

Nothing here looks at a timing (speed is the benchmark's business, not the tests').
"""

from __future__ import annotations

from pathlib import Path

from tests.harness import run_quick_benchmark


def test_augmentation_benchmark_runs_and_reports_every_figure(tmp_path: Path) -> None:
    figures, stdout = run_quick_benchmark("augmentation.py", tmp_path)
    assert figures["quick"] is True
    for key in ("ours_images_per_s", "ours_op_by_op_images_per_s", "albumentations_images_per_s", "kornia_images_per_s", "ratio_to_albumentations", "ratio_to_kornia"):
        assert figures["one_thread"][key] > 0, key
    assert figures["one_thread"]["albumentations_version"] == "2.0.8"
    assert figures["one_thread"]["kornia_version"].startswith("0.9")
    # One resampling is closer to the ideal than one per op.
    assert figures["sharpness"]["fused_psnr_db"] > figures["sharpness"]["op_by_op_psnr_db"]
    stream = figures["stream"]
    assert stream["ratio_stream_to_in_process"] > 0
    # The CPU accounting: both sides of the stream and of the do-nothing stream, the engine, the ceilings.
    for part in ("stream", "transport"):
        assert stream[part]["server_cpu_ms_per_batch"] > 0 and stream[part]["client_cpu_ms_per_batch"] > 0, part
    assert stream["in_process"]["client_cpu_ms_per_batch"] > 0
    assert 0 < stream["ceiling_one_core_per_process"] <= stream["ceiling_on_these_cores"] * 2
    # The stream through a server whose engine runs in a child process: the child did the engine's work.
    split = stream["stream_engine_process"]
    assert split["engine_process_cpu_ms_per_batch"] > 0 and split["server_cpu_ms_per_batch"] > 0 and stream["ratio_engine_process_to_in_process"] > 0
    assert stream["engine_process_ceiling_one_core_per_process"] > 0
    assert "ceiling from CPU" in stdout
    assert figures["job"]["items_written"] == figures["job"]["items"] == 200 and figures["job"]["items_per_s"] > 0
    assert "Summary" in stdout and "ratio" in stdout
