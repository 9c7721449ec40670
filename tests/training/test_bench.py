"""bench/training.py keeps working: its quick mode runs every section and reports every figure the docs cite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_training_benchmark_quick_mode_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "training.py"), "--threads", "1", "quick", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["loop"]["ratio"] > 0 and figures["loop"]["our_step_ms"] > 0
    assert figures["data"]["items"] == 500 and figures["data"]["stream_samples_per_s"] > 0
    mnist = figures["mnist"]
    assert mnist["train_items"] == 500 and mnist["holdout_items"] == 700 and mnist["validation_items"] == 300
    for key in ("frechet_distance", "precision", "recall", "tstr", "trtr", "memorization_rate"):
        assert key in mnist, key
    assert "loop: our GAN step" in result.stdout and "mnist-enhanced_gan-10pct" in result.stdout


def test_the_seeds_summary_gives_mean_spread_and_paired_differences(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_training", ROOT / "bench" / "training.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    figures = {("gan", 0): (300.0, 0.40), ("gan", 1): (500.0, 0.50), ("enhanced_gan", 0): (250.0, 0.45), ("enhanced_gan", 1): (520.0, 0.60)}
    for (kind, seed), (fd, tstr) in figures.items():
        run = {"kind": kind, "fraction": 0.1, "hyperparameters": {"seed": seed}, "frechet_distance": fd, "tstr": tstr,
               "frechet_distance_real_baseline": 40.0, "trtr": 0.9, "label_fidelity": 0.8, "precision": 0.9, "recall": 0.2}
        (tmp_path / f"mnist-{kind}-10pct-seed{seed}.json").write_text(json.dumps(run))
    (tmp_path / "mnist-gan-10pct.json").write_text("{}")  # not a seeded run: left out
    summary = bench.seeds_table(tmp_path)
    assert "| 10% | gan | 2 | 400 ± 141 [300, 500] | 40 | 0.450 ± 0.071 [0.400, 0.500] | 0.900 |" in summary
    assert "| 10% | enhanced_gan | 2 | 385 ± 191 [250, 520] |" in summary
    assert ("Fréchet distance -50, +20 (lower in 1; mean -15 ± 35 standard error), "
            "TSTR +0.050, +0.100 (higher in 2; mean +0.075 ± 0.025 standard error)") in summary
    newer = tmp_path / "newer"  # a second folder: its runs replace the first's of the same kind and seed
    newer.mkdir()
    run = json.loads((tmp_path / "mnist-enhanced_gan-10pct-seed1.json").read_text()) | {"frechet_distance": 480.0}
    (newer / "mnist-enhanced_gan-10pct-seed1.json").write_text(json.dumps(run))
    assert "Fréchet distance -50, -20 (lower in 2;" in bench.seeds_table(tmp_path, newer)


def test_the_discriminator_scores_probe_gives_r_t_and_r_v(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "training.py"), "--threads", "1", "dscores", "--kind", "enhanced_gan",
         "--steps", "4", "--every", "2", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads((tmp_path / "dscores-enhanced_gan-seed0.json").read_text())["rows"]
    assert [row["step"] for row in rows] == [2, 4]
    for row in rows:
        assert -1.0 <= row["r_t"] <= 1.0
        margin = row["train"] - row["fake"]
        assert row["r_v"] == (row["train"] - row["validation"]) / margin if margin > 0 else row["r_v"] == 0.0
