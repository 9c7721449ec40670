"""Simulacra services as a user runs them: `simulacra serve NAME` subprocesses on free loopback ports.

Used by the data-loading tests (which read through DataLoader worker processes,
so the services must not live on the test's own event loop) and the demo tests.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from simulacra_services.core.config import Settings
from tests.harness import service_process


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


@contextmanager
def running_services(data_dir: Path, names: Sequence[str]) -> Iterator[dict[str, str]]:
    """Start ``simulacra serve NAME`` for each name (``tests.harness.service_process``, each knowing
    every other's address, its output in ``data_dir/NAME.log``); yields {name: address}; SIGTERM at the end."""
    data_dir.mkdir(parents=True, exist_ok=True)
    env = suite_environment(data_dir, names)
    settings = Settings.from_env(env)
    with ExitStack() as stack:
        processes = []
        for name in names:
            process, _ = stack.enter_context(
                service_process(name, settings, start_timeout=90.0, port=settings.port(name), lease_seconds=None, log=data_dir / f"{name}.log")
            )
            processes.append(process)
        stack.callback(_terminate, processes)  # runs first: a graceful stop before service_process's kill
        yield {name: settings.address(name) for name in names}


def _terminate(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass  # service_process kills it
