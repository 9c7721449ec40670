"""`simulacra up`: run the four services on one machine, one process each.

Each service runs as `simulacra serve <name>` in a child process with the same
settings (passed through the environment); its log goes to DATA_DIR/logs.
The launcher waits until every service reports SERVING, prints the endpoints,
and on Ctrl-C or SIGTERM stops all of them gracefully. If any service dies,
the launcher stops the others and exits non-zero.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from simulacra_services.cli import health
from simulacra_services.core.config import SERVICES, TITLES, Settings

POLL_SECONDS = 0.2


@dataclass
class Child:
    name: str
    title: str
    address: str
    log_path: Path
    process: subprocess.Popen[bytes]


def run_up(settings: Settings, *, startup_timeout: float = 120.0, out: IO[str] = sys.stdout) -> int:
    data_dir = Path(settings.data_dir).resolve()
    settings = settings.replace(data_dir=str(data_dir))
    (data_dir / "logs").mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    children: list[Child] = []
    try:
        children = [_spawn(name, settings, data_dir) for name in SERVICES]
        print(f"Starting Simulacra ({len(children)} services, data in {data_dir}) ...", file=out, flush=True)
        if not _wait_until_serving(children, settings, stop, startup_timeout, out):
            return 1 if not stop.is_set() else 0
        _print_endpoints(children, settings, out)
        while not stop.wait(POLL_SECONDS):
            dead = [c for c in children if c.process.poll() is not None]
            if dead:
                for c in dead:
                    _report_death(c, out)
                return 1
        print("Stopping ...", file=out, flush=True)
        return 0
    finally:
        _stop_all(children, settings, out)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _spawn(name: str, settings: Settings, data_dir: Path) -> Child:
    log_path = data_dir / "logs" / f"{name}.log"
    env = {**os.environ, **settings.to_env()}
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "simulacra_services.cli.main", "serve", name],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Own process group: a terminal's Ctrl-C reaches the launcher only,
            # which then drains the services in order.
            start_new_session=True,
        )
    return Child(name, TITLES[name], settings.address(name), log_path, process)


def _wait_until_serving(children: list[Child], settings: Settings, stop: threading.Event, timeout: float, out: IO[str]) -> bool:
    deadline = time.monotonic() + timeout
    pending = {c.name for c in children}
    while pending:
        if stop.is_set():
            return False
        for c in children:
            if c.name not in pending:
                continue
            if c.process.poll() is not None:
                _report_death(c, out)
                return False
            if health.check(c.address, settings, timeout=1.0) == "SERVING":
                pending.discard(c.name)
                print(f"  {c.title:<22} SERVING", file=out, flush=True)
        if time.monotonic() > deadline:
            print(f"error: {', '.join(sorted(pending))} did not report SERVING within {timeout:.0f}s; see {children[0].log_path.parent}", file=out, flush=True)
            return False
        if pending:
            time.sleep(POLL_SECONDS)
    return True


def _print_endpoints(children: list[Child], settings: Settings, out: IO[str]) -> None:
    scheme = "grpcs" if settings.tls_enabled else "grpc"
    print("\nSimulacra is up:", file=out)
    print(f"  {'service':<22} {'endpoint':<28} {'metrics':<30} log", file=out)
    for c in children:
        port = settings.metrics_port(c.name)
        metrics = f"http://{settings.address(c.name).rsplit(':', 1)[0]}:{port}/metrics" if port else "off"
        print(f"  {c.title:<22} {scheme + '://' + c.address:<28} {metrics:<30} {c.log_path}", file=out)
    print("\nPress Ctrl-C to stop.", file=out, flush=True)


def _report_death(child: Child, out: IO[str]) -> None:
    print(f"error: {child.title} exited with code {child.process.returncode}; last lines of {child.log_path}:", file=out)
    lines = child.log_path.read_text(errors="replace").splitlines()[-15:]
    for line in lines:
        print(f"  | {line}", file=out)
    out.flush()


def _stop_all(children: list[Child], settings: Settings, out: IO[str]) -> None:
    running = [c for c in children if c.process.poll() is None]
    for c in running:
        c.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + settings.shutdown_grace_seconds + 5
    for c in running:
        try:
            c.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"  {c.title} did not stop in time; killing it", file=out)
            c.process.kill()
            c.process.wait()
    if running:
        print("All services stopped.", file=out, flush=True)
