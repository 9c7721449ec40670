"""Temporary files left by a writer killed with SIGKILL are swept when a local store opens;
a live writer's temporary file is never touched, even by another process's store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from simulacra_services.core.storage.keys import TEMP_PREFIX
from simulacra_services.core.storage.local import LocalObjectStore

pytestmark = pytest.mark.timeout(60)

WRITER = """
import sys
from simulacra_services.core.storage.local import LocalObjectStore
LocalObjectStore(sys.argv[1]).put_stream("images/big.png", sys.stdin.buffer)
"""


def _temporary_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(TEMP_PREFIX + "*")]


def _wait_for(predicate, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + 30
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_writer_killed_mid_write_leaves_a_file_that_the_next_start_sweeps(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    LocalObjectStore(root).put("images/kept.png", b"committed")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(root)], stdin=subprocess.PIPE)
    try:
        assert writer.stdin is not None
        writer.stdin.write(b"x" * 1_000_000)
        writer.stdin.flush()
        _wait_for(lambda: _temporary_files(root), "the writer's temporary file")
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(10)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert len(_temporary_files(root)) == 1  # what kill -9 leaves behind

    reopened = LocalObjectStore(root, sweep_grace_seconds=0)
    assert reopened.swept == 1 and _temporary_files(root) == []
    assert reopened.get("images/kept.png") == b"committed"
    assert list(reopened.list("images/")) and not any(k.key == "images/big.png" for k in reopened.list("images/"))


def test_a_live_writers_temporary_file_survives_another_stores_sweep(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    store = LocalObjectStore(root)
    read_fd, write_fd = os.pipe()
    done: list[object] = []
    thread = threading.Thread(target=lambda: done.append(store.put_stream("a/b.bin", os.fdopen(read_fd, "rb"))))
    thread.start()
    try:
        os.write(write_fd, b"y" * 100_000)
        _wait_for(lambda: _temporary_files(root), "the writer's temporary file")
        old = time.time() - 3600
        (temp,) = _temporary_files(root)
        os.utime(temp, (old, old))  # old enough to sweep, were it not locked
        assert LocalObjectStore(root, sweep_grace_seconds=0).swept == 0
        assert temp.exists()
    finally:
        os.close(write_fd)
        thread.join(30)
    assert store.get("a/b.bin") == b"y" * 100_000 and _temporary_files(root) == []


def test_an_unlocked_temporary_file_younger_than_the_grace_stays(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    root.mkdir()
    (root / f"{TEMP_PREFIX}fresh").write_bytes(b"maybe a writer that has not locked it yet")
    stale = root / f"{TEMP_PREFIX}stale"
    stale.write_bytes(b"abandoned")
    os.utime(stale, (time.time() - 60, time.time() - 60))
    assert LocalObjectStore(root, sweep_grace_seconds=30).swept == 1
    assert [p.name for p in _temporary_files(root)] == [f"{TEMP_PREFIX}fresh"]
