"""bench/sampling.py and bench/sampling_threads.py keep working: each runs in quick mode and reports every figure docs/sampling.md cites.

No timing is judged here (speed is the benchmark's business, not the tests')."""

from __future__ import annotations

from pathlib import Path

from tests.harness import run_quick_benchmark


def test_the_sampling_benchmark_runs_and_reports_every_figure(tmp_path: Path) -> None:
    figures, stdout = run_quick_benchmark("sampling.py", tmp_path, "--no-mlserver")
    assert figures["quick"] is True
    for model, shape in (("digits", [1, 28, 28]), ("scenes", [3, 64, 64])):
        f = figures[model]
        assert f["shape"] == shape
        for key in ("stream_samples_per_s", "in_process_batch64_samples_per_s", "ratio_stream_to_in_process", "unary_p50_us",
                    "unary_p99_us", "in_process_batch1_p50_us", "ratio_batching_to_no_batching", "ratio_batching_to_limit"):
            assert f[key] > 0, (model, key)
        assert "unary_overhead_p50_us" in f
        for load in ("concurrent_batching", "concurrent_no_batching"):
            assert f[load]["samples_per_s"] > 0 and f[load]["p99_ms"] > 0
            # CPU accounting: client and service CPU per sample from /proc, and the ceiling they allow on these cores
            assert f[load]["client_cpu_per_sample_us"] > 0 and f[load]["server_cpu_per_sample_us"] > 0
            assert f[load]["cpu_ceiling_share_of_limit"] > 0 and f[load]["cpu_share_of_limit_on_equal_cores"] > 0
        assert f["in_process_batch64_cpu_per_sample_us"] > 0 and "cpu_per_sample_left_beside_inference_at_aim_us" in f
        b = f["breakdown"]  # (e): the floor, the interceptor, each stage of ours, and what they leave unexplained
        assert b["grpc_echo_floor_p50_us"] > 0 and b["ours_p50_us"] > 0 and b["request_bytes"] > 0
        assert b["sync_echo_floor_p50_us"] > 0 and b["sync_echo_server_cpu_per_call_us"] >= 0  # the floor of a synchronous server too
        assert b["response_bytes"] > shape[0] * shape[1] * shape[2]  # the uint8 sample travels in the measured response
        assert b["stages_p50_us"]["ONNX Runtime run, batch 1"] > 0
        for key in ("core_interceptor_p50_us", "overhead_p50_us", "overhead_above_floor_p50_us", "unexplained_p50_us", "unary_server_cpu_per_call_us"):
            assert key in b, key
    assert "Summary" in stdout and "32 clients" in stdout and "Where one unary call goes" in stdout
    assert "ceiling" in stdout and "synchronous grpc.server" in stdout


def test_the_thread_settings_benchmark_runs_and_reports_every_figure(tmp_path: Path) -> None:
    figures, stdout = run_quick_benchmark("sampling_threads.py", tmp_path)
    assert figures["quick"] is True
    for model in ("digits", "scenes"):
        for batch in (1, 64):
            settings = figures[f"{model}_batch{batch}"]
            assert set(settings) == {"default", "one", "spinning"}
            assert settings["default"]["wall_vs_default"] == 1.0 and settings["default"]["cpu_vs_default"] == 1.0
            for name, r in settings.items():
                assert r["p50_us"] > 0 and r["cpu_per_call_us"] > 0, (model, batch, name)
    assert "x1.00 of default" in stdout
