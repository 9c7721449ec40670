#!/usr/bin/env python3
"""ONNX Runtime's threads on this machine, for the sampling service's generators, in process.

    python bench/sampling_threads.py            # 5 interleaved rounds per setting (about a minute)
    python bench/sampling_threads.py --quick --json out.json

For the bench's two generators (``digits`` 1x28x28 and ``scenes`` 3x64x64, from bench/sampling.py)
and batches 1 and 64, one ``session.run`` loop per session setting, the settings interleaved round
by round so that a change in the machine's load hits them all alike:

  default   the service's default session: intra-op threads 0 (ONNX Runtime's choice, one per
            core), no spinning;
  one       one intra-op thread (``SIMULACRA_SAMPLING_INTRA_OP_THREADS=1``);
  spinning  the default threads with spinning on (``SIMULACRA_SAMPLING_SPINNING=true``).

It prints the p50 wall time of a call and the process's CPU time per call (all threads), each
against ``default`` from the same run. docs/sampling.md ("Tuning") cites the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sampling import DIGITS, SCENES, export, ort_session  # noqa: E402  (also puts services/ and the SDK on the path)

import onnxruntime as ort  # noqa: E402  (the version goes into the figures)

from simulacra_services.sampling.runtime import noise  # noqa: E402

SETTINGS = {"default": (0, False), "one": (1, False), "spinning": (0, True)}


def measure(onnx: bytes, latent_dim: int, batch: int, rounds: int, calls: int) -> dict[str, dict[str, float]]:
    sessions = {name: ort_session(onnx, intra_op_threads=intra, spinning=spin) for name, (intra, spin) in SETTINGS.items()}
    feed = {"z": noise.latents(1, np.arange(batch), latent_dim), "labels": np.zeros(batch, np.int64)}
    walls: dict[str, list[float]] = {name: [] for name in sessions}
    cpus: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, s in sessions.items():
            for _ in range(max(2, calls // 10)):  # warm its threads after the other sessions ran
                s.run(["samples"], feed)
            started_cpu = time.process_time()
            for _ in range(calls):
                started = time.perf_counter()
                s.run(["samples"], feed)
                walls[name].append(time.perf_counter() - started)
            cpus[name].append((time.process_time() - started_cpu) / calls)
    return {
        name: {"p50_us": float(np.median(walls[name]) * 1e6), "cpu_per_call_us": float(np.median(cpus[name]) * 1e6)}
        for name in sessions
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    rounds = 2 if args.quick else 5
    load = os.getloadavg()[0]
    figures: dict[str, Any] = {"quick": args.quick, "rounds": rounds, "cpus": os.cpu_count(), "load_average_at_start": load,
                               "onnxruntime": ort.__version__}
    for model, sig in {"digits": DIGITS, "scenes": SCENES}.items():
        onnx = export(sig)
        for batch in (1, 64):
            calls = (40 if args.quick else 400) if batch == 1 else (3 if args.quick else 20)
            result = measure(onnx, sig.latent_dim, batch, rounds, calls)
            base = result["default"]
            for name, r in result.items():
                r["wall_vs_default"] = r["p50_us"] / base["p50_us"]
                r["cpu_vs_default"] = r["cpu_per_call_us"] / base["cpu_per_call_us"]
                print(f"{model:6s} batch {batch:2d}  {name:8s}  p50 {r['p50_us']:9.0f} µs (x{r['wall_vs_default']:.2f} of default)"
                      f"  CPU a call {r['cpu_per_call_us']:9.0f} µs (x{r['cpu_vs_default']:.2f})", flush=True)
            figures[f"{model}_batch{batch}"] = result
    figures["load_average_at_end"] = os.getloadavg()[0]
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
