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
    assert mnist["train_items"] == 500 and mnist["holdout_items"] == 1000
    for key in ("frechet_distance", "precision", "recall", "tstr", "trtr", "memorization_rate"):
        assert key in mnist, key
    assert "loop: our GAN step" in result.stdout and "mnist-enhanced_gan-10pct" in result.stdout
