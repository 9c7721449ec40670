"""Simulacra services as a user runs them: `simulacra serve NAME` subprocesses on free loopback ports.

Used by the data-loading tests (which read through DataLoader worker processes,
so the services must not live on the test's own event loop) and the demo tests.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from simulacra_client.channel import check_health, open_channel


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def suite_environment(data_dir: Path, names: Sequence[str]) -> dict[str, str]:
    """Environment for services and CLI: fresh ports, metrics off, data in ``data_dir``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMULACRA_")}
    env["SIMULACRA_DATA_DIR"] = str(data_dir)
    env["SIMULACRA_LOG_LEVEL"] = "WARNING"
    for name, port in zip(names, free_ports(len(names))):
        env[f"SIMULACRA_{name.upper()}_PORT"] = str(port)
        env[f"SIMULACRA_{name.upper()}_ADDRESS"] = f"127.0.0.1:{port}"
        env[f"SIMULACRA_{name.upper()}_METRICS_PORT"] = "0"
    return env


def wait_serving(address: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open_channel(address) as channel:
            try:
                if check_health(channel, timeout=1.0).name == "SERVING":
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
        time.sleep(0.2)
    raise AssertionError(f"{address} did not report SERVING within {timeout}s")


@contextmanager
def running_services(data_dir: Path, names: Sequence[str]) -> Iterator[dict[str, str]]:
    """Start ``simulacra serve NAME`` for each name; yields {name: address}; SIGTERM at the end."""
    data_dir.mkdir(parents=True, exist_ok=True)
    env = suite_environment(data_dir, names)
    processes = []
    try:
        for name in names:
            log = (data_dir / f"{name}.log").open("ab")
            processes.append(subprocess.Popen([sys.executable, "-m", "simulacra_services.cli.main", "serve", name], env=env, stdout=log, stderr=subprocess.STDOUT))
        addresses = {name: env[f"SIMULACRA_{name.upper()}_ADDRESS"] for name in names}
        for address in addresses.values():
            wait_serving(address)
        yield addresses
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
