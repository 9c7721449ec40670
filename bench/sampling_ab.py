#!/usr/bin/env python3
"""A/B of the 32-client loads of bench/sampling.py between a git revision of services/ and the working tree.

    python bench/sampling_ab.py --rev 2a2795a                  # scenes, 4 rounds of 5 s loads
    python bench/sampling_ab.py --rev HEAD~3 --model digits --rounds 6 --seconds 3

Two sampling services run side by side on the same registry: one from ``git archive REV services``
(unpacked in a temporary folder), one from the working tree. Round after round, each gets (c) the
32 grpc.aio stub clients and (d) the tritonclient load on its KServe endpoint, in turn, so that both see
the same machine. Per load: samples/s, and CPU per sample of the service process and of the load
generator (/proc, over the load window), with the cores they kept busy; medians over the rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sampling as bench  # noqa: E402

from simulacra_services.core.registry import ModelRegistry  # noqa: E402
from simulacra_services.core.storage import LocalObjectStore  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", required=True, help="git revision whose services/ is the 'before'")
    parser.add_argument("--model", choices=("digits", "scenes"), default="scenes")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    sig = {"digits": bench.DIGITS, "scenes": bench.SCENES}[args.model]
    clients = str(bench.ROOT / "clients" / "python")
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "before"
        old.mkdir()
        archive = subprocess.run(["git", "archive", args.rev, "services"], cwd=bench.ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        trees = {f"before ({args.rev})": old / "services", "after (working tree)": bench.ROOT / "services"}
        data = Path(tmp) / "data"
        ModelRegistry(LocalObjectStore(data / "objects")).register_version(args.model, bench.export(sig), sig, model_kind="gan")
        python = bench.kserve_python()
        with contextlib.ExitStack() as stack:
            addresses = {name: stack.enter_context(bench.service(data, PYTHONPATH=os.pathsep.join([str(tree), clients]))) for name, tree in trees.items()}
            for address in addresses.values():
                bench.concurrent(address, args.model, 32, 1.0)  # loads and warms
            print(f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
            for r in range(args.rounds):
                for name, address in addresses.items():
                    c = bench.concurrent(address, args.model, 32, args.seconds)
                    d = bench.triton_load(python, address, args.model, sig, 32, args.seconds, bench.SERVICE_PIDS[address])
                    results.setdefault(name, {"c": [], "d": []})
                    results[name]["c"].append(c)
                    results[name]["d"].append(d)
                    print(f"  round {r} {name:24s} (c) {c['samples_per_s']:6.0f}/s server {c['server_cpu_per_sample_us']:5.0f} client {c['client_cpu_per_sample_us']:4.0f} µs, cores {c['cores_busy']:.2f}"
                          f"   (d) {d['samples_per_s']:6.0f}/s server {d['server_cpu_per_sample_us']:5.0f} client {d['client_cpu_per_sample_us']:4.0f} µs, cores {d['cores_busy']:.2f}", flush=True)
            print(f"load average at end {os.getloadavg()[0]:.2f}")
    print(f"\n{args.model}, medians over {args.rounds} rounds of {args.seconds:.0f} s (samples/s; CPU per sample in µs)")
    for name, parts in results.items():
        for part, rows in parts.items():
            med = {k: statistics.median(row[k] for row in rows) for k in ("samples_per_s", "server_cpu_per_sample_us", "client_cpu_per_sample_us")}
            print(f"  {name:24s} ({part}) {med['samples_per_s']:6.0f}/s   server {med['server_cpu_per_sample_us']:5.0f}   client {med['client_cpu_per_sample_us']:4.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
