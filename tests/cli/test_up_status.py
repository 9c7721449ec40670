"""`simulacra up` and `simulacra status`, run as a user runs them: real processes, real ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simulacra_services.core.config import SERVICES, TITLES


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture
def suite_env(tmp_path: Path) -> dict[str, str]:
    ports = free_ports(2 * len(SERVICES))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMULACRA_")}
    env["SIMULACRA_DATA_DIR"] = str(tmp_path / "data")
    env["SIMULACRA_LOG_FORMAT"] = "json"
    for i, name in enumerate(SERVICES):
        env[f"SIMULACRA_{name.upper()}_PORT"] = str(ports[i])
        env[f"SIMULACRA_{name.upper()}_METRICS_PORT"] = str(ports[len(SERVICES) + i])
    return env


def simulacra(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simulacra_services.cli.main", *args], env=env, capture_output=True, text=True, timeout=timeout)


def read_until(process: subprocess.Popen[str], marker: str, timeout: float) -> str:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if marker in line:
            return "".join(seen)
    process.kill()
    raise AssertionError(f"{marker!r} never appeared; output so far:\n{''.join(seen)}")


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_up_starts_four_healthy_services_and_stops_them_on_a_signal(suite_env: dict[str, str], stop_signal: int) -> None:
    up = subprocess.Popen(
        [sys.executable, "-m", "simulacra_services.cli.main", "up"],
        env=suite_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        banner = read_until(up, "Press Ctrl-C to stop.", timeout=120)
        for name in SERVICES:
            assert f"grpc://127.0.0.1:{suite_env[f'SIMULACRA_{name.upper()}_PORT']}" in banner
            assert f"{TITLES[name]:<22} SERVING" in banner

        status = simulacra("status", env=suite_env)
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.count("SERVING") == len(SERVICES)

        up.send_signal(stop_signal)
        rest = up.communicate(timeout=60)[0]
        assert up.returncode == 0, rest
        assert "All services stopped." in rest
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()

    after = simulacra("status", env=suite_env)
    assert after.returncode == 1
    assert after.stdout.count("UNREACHABLE") == len(SERVICES)
    logs = Path(suite_env["SIMULACRA_DATA_DIR"]) / "logs"
    assert sorted(p.stem for p in logs.glob("*.log")) == sorted(SERVICES)


def test_status_reports_unreachable_services_and_fails(suite_env: dict[str, str]) -> None:
    result = simulacra("status", "--service", "sampling", env=suite_env)
    assert result.returncode == 1
    assert "sampling" in result.stdout and "UNREACHABLE" in result.stdout
    assert "annotation-store" not in result.stdout


def test_up_fails_clearly_when_a_port_is_taken(suite_env: dict[str, str]) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", int(suite_env["SIMULACRA_TRAINING_PORT"])))
    blocker.listen()
    try:
        result = simulacra("up", "--startup-timeout", "60", env=suite_env, timeout=120)
    finally:
        blocker.close()
    assert result.returncode == 1
    assert "generator-training exited with code 1" in result.stdout
    assert "cannot listen on 127.0.0.1:" in result.stdout
    assert "Traceback" not in result.stdout
    # The others were started and must have been stopped again.
    assert "All services stopped." in result.stdout


def test_bad_configuration_is_refused_before_anything_starts(suite_env: dict[str, str]) -> None:
    result = simulacra("up", "--storage-backend", "ftp", env=suite_env)
    assert result.returncode == 2
    assert "SIMULACRA_STORAGE_BACKEND must be 'local' or 's3'" in result.stderr
