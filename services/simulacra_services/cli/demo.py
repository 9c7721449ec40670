"""`simulacra demo`: the whole flow on the 5000 MNIST digits, driven through the SDK only.

Stages: start the suite (as `simulacra up`, unless --no-start), import the
digits into the annotation-store split train/val/test by a fixed seed, make
a scarce-label set (10% of train) and a biased one (two classes cut to 5%),
augment, train a generator on the scarce set, serve it, then train one small
classifier four ways (real; + augmented; + synthetic streamed from the
sampling service; + both) over 3 seeds and write report.md with the table,
per-class recall of the biased variant and sample grids.

A stage whose service cannot do its part yet says so, in the output and in the
report, and the arms that need it are marked "not run" with the reason: no
number is ever made up. Ctrl-C stops the classifier runs and the suite cleanly.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from simulacra_services.core.config import SERVICES, Settings

ARMS = ("real", "real+augmented", "real+synthetic", "real+augmented+synthetic")
VARIANTS = ("scarce", "biased")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="", help="directory of report.md and its images (default DATA_DIR/demo-report)")
    parser.add_argument("--seeds", type=int, default=3, help="classifier seeds per arm")
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps per classifier run (batch 32)")
    parser.add_argument("--quick", action="store_true", help="a small run for tests: 1000 digits, 1 seed, 60 steps, 20 GAN steps")
    parser.add_argument("--no-start", action="store_true", help="use a suite that is already running (SIMULACRA_*_ADDRESS)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the train/val/test split and of the subsets")
    parser.add_argument("--gan-steps", type=int, default=4000, help="training steps of the enhanced GAN")
    parser.add_argument("--generator", default="", help="use this served generator (models/M/versions/V) instead of training one")
    parser.add_argument(
        "--synthetic-confidence", type=float, default=0.5,
        help="keep a synthetic digit only when a classifier trained on the real training digits gives its label at least this (0: keep all)",
    )
    parser.add_argument("--synthetic-share", type=float, default=0.15, help="share of each batch that is synthetic (0: an equal share per source)")


@dataclass
class Plan:
    """What the demo does, from the command's arguments."""

    out_dir: Path
    seeds: int
    steps: int
    digits: int = 5000
    split_seed: int = 0
    label_fraction: float = 0.10
    biased_classes: tuple[int, ...] = (3, 8)
    biased_fraction: float = 0.05
    batch_size: int = 32
    gan_steps: int = 4000
    evaluation_samples: int = 1000  # synthetic and real samples of the generator's quality report
    generator: str = ""
    synthetic_confidence: float = 0.5  # docs/results.md: the label filter and the synthetic share, measured
    synthetic_share: float = 0.15

    @classmethod
    def from_args(cls, args: argparse.Namespace, settings: Settings) -> Plan:
        out = Path(args.out or Path(settings.data_dir) / "demo-report").resolve()
        if not 0 <= args.synthetic_confidence < 1 or not 0 <= args.synthetic_share < 1:
            raise ValueError("--synthetic-confidence and --synthetic-share lie in [0, 1)")
        synthetic = {"synthetic_confidence": args.synthetic_confidence, "synthetic_share": args.synthetic_share}
        if args.quick:  # a 20-step generator's digits would all be rejected: the filter keeps every one
            return cls(
                out, seeds=1, steps=min(args.steps, 60), digits=1000, split_seed=args.split_seed, gan_steps=min(args.gan_steps, 20),
                generator=args.generator, evaluation_samples=200, synthetic_confidence=0.0, synthetic_share=args.synthetic_share,
            )
        if args.seeds < 1 or args.steps < 1 or args.gan_steps < 1:
            raise ValueError("--seeds, --steps and --gan-steps must be at least 1")
        return cls(out, seeds=args.seeds, steps=args.steps, split_seed=args.split_seed, gan_steps=args.gan_steps, generator=args.generator, **synthetic)


@dataclass
class Stage:
    name: str
    status: str = "pending"  # done, not available, failed
    detail: str = ""
    seconds: float = 0.0


@dataclass
class Journal:
    """Progress lines as they happen, and what each stage came to (for the report)."""

    out: TextIO
    stages: list[Stage] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    interrupt: Interrupt | None = None

    def say(self, message: str) -> None:
        if self.interrupt is not None:
            self.interrupt.check()
        print(f"[{time.monotonic() - self.started:6.1f}s] {message}", file=self.out, flush=True)

    def begin(self, name: str) -> Stage:
        stage = Stage(name)
        self.stages.append(stage)
        self.say(f"== {name}")
        stage.seconds = time.monotonic()
        return stage

    def end(self, stage: Stage, status: str, detail: str = "") -> None:
        stage.status, stage.detail = status, detail
        stage.seconds = time.monotonic() - stage.seconds
        self.say(f"   {name_status(stage)}")


class Interrupt:
    """Ctrl-C for the demo: a KeyboardInterrupt now, and a guarantee that the demo does stop.

    The first SIGINT raises KeyboardInterrupt as Python's own handler does. Should a library
    lose it (one raised inside a blocking gRPC or torch call can be swallowed there; seen under
    heavy load, not traced to its source), the next progress line raises it again; and a watchdog
    stops the suite and ends the process with 130 if the demo is still running ``grace`` seconds
    after the signal (or at a second Ctrl-C), so Ctrl-C never leaves a demo or a suite running.
    """

    def __init__(self, out: TextIO, grace: float) -> None:
        self.out = out
        self.grace = grace
        self.requested = False
        self.handled = False
        self._forced = threading.Event()
        self._suite: Suite | None = None

    def install(self, suite: Suite) -> object:
        self._suite = suite
        return signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.requested:
            self._force("a second Ctrl-C")
            return
        self.requested = True
        threading.Thread(target=self._watchdog, name="demo-interrupt-watchdog", daemon=True).start()
        raise KeyboardInterrupt

    def check(self) -> None:
        """Raise the interrupt again if it was requested, is not on its way up now, and nobody handled it."""
        if self.requested and not self.handled and not isinstance(sys.exc_info()[1], KeyboardInterrupt):
            raise KeyboardInterrupt

    def _watchdog(self) -> None:
        if not self._forced.wait(self.grace):
            self._force(f"still running {self.grace:.0f} s after Ctrl-C")

    def _force(self, why: str) -> None:
        self._forced.set()
        self.handled = True
        print(f"\ninterrupted: {why}; stopping the suite and exiting", file=self.out, flush=True)
        if self._suite is not None:
            self._suite.stop()
        self.out.flush()
        sys.stderr.flush()
        os._exit(130)


def name_status(stage: Stage) -> str:
    return f"{stage.name}: {stage.status.upper()}{' - ' + stage.detail if stage.detail else ''} ({stage.seconds:.1f} s)"


# ---------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------


class Suite:
    """`simulacra up` as a child process (own session: Ctrl-C reaches the demo, which stops it)."""

    def __init__(self, settings: Settings, journal: Journal) -> None:
        self.settings = settings
        self.journal = journal
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180.0) -> None:
        data_dir = Path(self.settings.data_dir).resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        log = (data_dir / "demo-suite.log").open("ab")
        env = {**os.environ, **self.settings.to_env()}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "simulacra_services.cli.main", "up"], env=env, stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.journal.say(f"   starting the suite (log: {data_dir / 'demo-suite.log'})")
        self.wait(timeout)

    def wait(self, timeout: float) -> None:
        from simulacra_client.channel import check_health, open_channel

        deadline = time.monotonic() + timeout
        pending = list(SERVICES)
        while pending:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the suite exited with code {self.process.returncode}; see {Path(self.settings.data_dir) / 'demo-suite.log'}")
            name = pending[0]
            with open_channel(self.settings.address(name), token=self.settings.auth_token or None, tls_ca=self.settings.tls_ca or None) as channel:
                try:
                    if check_health(channel, timeout=1.0).name == "SERVING":
                        pending.pop(0)
                        self.journal.say(f"   {name} SERVING at {self.settings.address(name)}")
                        continue
                except Exception:  # noqa: BLE001 - not up yet
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{', '.join(pending)} did not report SERVING within {timeout:.0f} s")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.journal.say("   stopping the suite")
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=self.settings.shutdown_grace_seconds + 20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# ---------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------


def run(args: argparse.Namespace, settings: Settings, *, out: TextIO | None = None) -> int:
    """Run the demo; the exit status (0 done, 1 failed, 130 interrupted)."""
    out = out or sys.stdout
    try:
        plan = Plan.from_args(args, settings)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    journal = Journal(out)
    suite = Suite(settings, journal)
    interrupt = journal.interrupt = Interrupt(out, grace=settings.shutdown_grace_seconds + 60)
    previous = interrupt.install(suite) if threading.current_thread() is threading.main_thread() else None
    try:
        stage = journal.begin("suite")
        if args.no_start:
            suite.wait(30.0)
        else:
            suite.start()
        journal.end(stage, "done", "every service SERVING")
        from simulacra_services.cli.demo_flow import Flow

        report = Flow(plan, settings, journal).run()
        journal.say(f"report: {report}")
        print(f"\nReport written to {report}", file=out, flush=True)
        return 0
    except KeyboardInterrupt:
        interrupt.handled = True
        print("\ninterrupted: stopping cleanly", file=out, flush=True)
        return 130
    except Exception as error:  # noqa: BLE001 - a demo reports and exits, with the stage that failed
        failed = journal.stages[-1] if journal.stages else Stage("start")
        if failed.status == "pending":
            journal.end(failed, "failed", f"{type(error).__name__}: {error}")
        print(f"error: {failed.name} failed: {error}", file=sys.stderr, flush=True)
        return 1
    finally:
        interrupt.handled = True
        suite.stop()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
