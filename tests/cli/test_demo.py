"""`simulacra demo --quick` as a user runs it: it starts the suite, runs every stage, writes the report.

Quick mode: 1000 digits, 1 seed, 60 classifier steps, 20 GAN steps (the numbers
mean nothing; that every stage runs through the services and reports does).
Each test has its own data directory: any one of them runs alone.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.client.suite import suite_environment

pytestmark = pytest.mark.timeout(1200)  # the generator's quality report alone takes minutes on a loaded machine

SERVICES = ["annotation", "augmentation", "training", "sampling"]
ARMS = ["real", "real+augmented", "real+synthetic", "real+augmented+synthetic"]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "demo"


def demo(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = suite_environment(data_dir, SERVICES)
    command = [sys.executable, "-m", "simulacra_services.cli.main", "demo", "--quick", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=1000)


def test_the_quick_demo_runs_every_stage_and_writes_the_report(data_dir: Path) -> None:
    result = demo(data_dir, "--out", str(data_dir / "report"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert f"Report written to {data_dir / 'report' / 'report.md'}" in out
    for stage in ("suite", "data: import", "augment", "train the enhanced GAN", "serve the generator", "report"):
        assert re.search(rf"{re.escape(stage)}.*: DONE", out), stage
    assert "NOT AVAILABLE" not in out and "not run" not in out
    # Progress: the import, each stage of the GAN's job with its steps (a quick run may pass its 20
    # training steps between two progress reports, so the step count may first show at export),
    # and each classifier run are reported as they happen.
    assert "importing 600/600 items" in out and "seed 0: test accuracy" in out
    assert re.search(r"^\[ *[\d.]+s\]    training\b", out, re.M) and re.search(r"step 20/20", out)
    table = out[out.index("Test accuracy (mean"):]
    for arm in ARMS:
        assert re.search(rf"^  {re.escape(arm)}\s+\d+\.\d% ± 0\.0\s+\d+\.\d% ± 0\.0$", table, re.M), arm

    report = (data_dir / "report" / "report.md").read_text()
    assert "| real+augmented+synthetic | " in report and "## Per-class recall, biased set" in report
    recall_rows = [line for line in report.splitlines() if line.startswith("| real") and line.count("%") == 10]
    assert len(recall_rows) == 4  # one row per arm, a recall per class
    pictures = (
        "real-scarce.png", "augmented-scarce.png", "synthetic.png",  # sample grids per class
        "generator-loss-curve.png", "generator-report.png",  # the training service's loss curve and quality report
        "classifier-loss-scarce.png", "classifier-loss-biased.png",  # the classifiers' loss curves per arm
    )
    for grid in pictures:
        assert (data_dir / "report" / grid).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({grid})" in report
    assert "per class [6, 7, 6, 3, 6, 5, 6, 6, 3, 6]" in report  # classes 3 and 8 cut to 5%
    # The training service's quality report of the generator, from the registry.
    assert "## Generator quality report" in report and re.search(r"\| label fidelity \| [0-9.e-]+ \|", report)
    # The suite was stopped: nothing answers on the ports any more.
    assert "stopping the suite" in out


def test_the_quick_demo_repeats_exactly_from_fresh_data(tmp_path: Path) -> None:
    # Two suites, two fresh data directories, the same digits: every figure and picture is the same
    # (imported items get ids from their files, so every stage sees its data in the same order).
    runs = [demo(tmp_path / name, "--out", str(tmp_path / name / "report")) for name in ("first", "second")]
    for run in runs:
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    accuracies = [re.findall(r"seed 0: test accuracy (\d+\.\d)%", run.stdout) for run in runs]
    assert len(accuracies[0]) == 8 and accuracies[0] == accuracies[1]
    reports = [re.sub(r"\(\d+\.\d+ s\)|in \d+ s|\d{2}:\d{2}:\d{2}", "", (tmp_path / name / "report" / "report.md").read_text())
               for name in ("first", "second")]
    assert reports[0] == reports[1]
    for picture in ("augmented-scarce.png", "synthetic.png", "classifier-loss-biased.png"):
        assert (tmp_path / "first" / "report" / picture).read_bytes() == (tmp_path / "second" / "report" / picture).read_bytes(), picture


def test_a_stage_that_cannot_run_says_so_and_its_arms_report_no_number(data_dir: Path) -> None:
    first = demo(data_dir, "--generator", "models/missing/versions/1", "--out", str(data_dir / "first"))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "demo-1000-s0-digits: importing 600 train digits" in first.stdout
    # A second run in the same data directory reuses the datasets the first one imported.
    result = demo(data_dir, "--generator", "models/missing/versions/1", "--out", str(data_dir / "missing"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "reusing datasets/demo-1000-s0-digits/versions/1" in out and "importing" not in out
    assert re.search(r"serve the generator \(sampling service\): NOT AVAILABLE - the sampling service could not load models/missing/versions/1: NOT_FOUND", out)
    report = (data_dir / "missing" / "report.md").read_text()
    assert "| real+synthetic | not run | not run |" in report
    assert "| real+augmented+synthetic | not run | not run |" in report
    assert re.search(r"\| real \| \d+\.\d% ± 0\.0 \| \d+\.\d% ± 0\.0 \|", report)
    assert "- **real+synthetic**: the sampling service could not load models/missing/versions/1" in report


def test_ctrl_c_stops_the_demo_and_the_suite_cleanly(data_dir: Path) -> None:
    env = suite_environment(data_dir / "interrupted", SERVICES)
    process = subprocess.Popen(
        [sys.executable, "-m", "simulacra_services.cli.main", "demo", "--quick"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    seen = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        seen.append(line)
        if "== data" in line or not line:
            break
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    text = "".join(seen) + out
    assert process.returncode == 130, text + err
    assert "interrupted: stopping cleanly" in text and "stopping the suite" in text
    assert "Traceback" not in err
    # `simulacra up` stopped every service: its log ends with the launcher's goodbye.
    log = (data_dir / "interrupted" / "demo-suite.log").read_text()
    assert "All services stopped." in log


class _Judge(torch.nn.Module):
    """Says "label = the image's first pixel x 10", sure of it (logit 10 against 0)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot((images[:, 0, 0, 0] * 10).long().clamp(0, 9), 10).float() * 10


def test_the_label_filter_keeps_the_samples_whose_label_the_judge_gives_and_the_batch_shares() -> None:
    from simulacra_services.cli.demo_classifier import FilterStarved, LabelFilter, Tally
    from simulacra_services.cli.demo_flow import batch_shares

    def blocks(agree_every: int) -> object:
        for start in range(0, 10**6, 50):
            labels = torch.arange(start, start + 50) % 10
            says = torch.where(torch.arange(start, start + 50) % agree_every == 0, labels, (labels + 1) % 10)
            yield says.float().div(10).add(0.01).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous(), labels

    tally = Tally()
    batches = LabelFilter(_Judge(), 0.9).batches(blocks(3), 32, tally)
    taken = [next(batches) for _ in range(5)]
    assert [len(labels) for _, labels in taken] == [32] * 5
    for images, labels in taken:  # only the samples the judge agrees with, in order
        assert torch.equal((images[:, 0, 0, 0] * 10).long(), labels)
    assert tally.accepted >= 160 and abs(tally.rate - 1 / 3) < 0.02
    keep_all = LabelFilter(_Judge(), 0.0).batches(blocks(3), 32)
    assert len(next(keep_all)[1]) == 32
    starved = LabelFilter(_Judge(), 0.9, patience=1000).batches(blocks(10**9), 32)
    with pytest.raises(FilterStarved, match="kept 1 of 1000 synthetic samples"):
        next(starved)

    assert batch_shares(32, ["real", "augmented", "synthetic"], 0.0) == [11, 11, 10]
    assert batch_shares(32, ["real", "augmented", "synthetic"], 0.25) == [12, 12, 8]
    assert batch_shares(32, ["real", "synthetic"], 0.25) == [24, 8]
    assert batch_shares(32, ["real"], 0.25) == [32]


def test_the_classifier_loss_picture_draws_one_line_per_arm_from_high_to_low(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from simulacra_services.cli.demo_report import CURVE_COLOURS, save_loss_curves

    falling = [[2.0 - step / 100 for step in range(200)], [2.2 - step / 100 for step in range(200)]]
    flat = [[0.5] * 200]
    path = save_loss_curves({"real": falling, "real+augmented": flat, "never run": [[]]}, tmp_path / "loss.png", smooth=10)
    assert path is not None
    pixels = np.asarray(Image.open(path).convert("RGB"))
    for colour, expect_falling in ((CURVE_COLOURS[0], True), (CURVE_COLOURS[1], False)):
        rows, cols = np.nonzero(np.all(pixels == colour, axis=-1))
        assert len(rows) > 100, f"no line drawn in {colour}"
        plotted = rows < 360 - 30 - 14 * 2  # the plot area, not the legend below it
        first, last = rows[plotted][np.argmin(cols[plotted])], rows[plotted][np.argmax(cols[plotted])]
        assert (last - first > 100) if expect_falling else abs(last - first) <= 3  # image rows grow downward
    assert save_loss_curves({"real": [[]]}, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
