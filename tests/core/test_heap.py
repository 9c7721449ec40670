"""core.heap: after ``keep_large_blocks`` a large block freed and asked for again is not faulted in again.

Counted in page faults of a fresh interpreter (not in time): grpc copies every
message on the event loop's thread, and each fresh page of such a copy costs a fault.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BLOCK = 48 * 1024 * 1024
PAGES = BLOCK // 4096

_PROGRAM = f"""
import resource, sys
from simulacra_services.core.heap import keep_large_blocks
if sys.argv[1] == "keep":
    assert keep_large_blocks(64 * 1024 * 1024)
block = b"\\x01" * {BLOCK}
del block
before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
block = b"\\x01" * {BLOCK}
print(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", _PROGRAM, mode], cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    return int(done.stdout.strip())


def _huge_pages_always() -> bool:
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc only")
def test_a_large_block_is_reused_from_the_heap_once_large_blocks_are_kept() -> None:
    assert _faults("keep") < PAGES // 100
    if not _huge_pages_always():  # the control: glibc's default maps the block afresh, page by page
        assert _faults("plain") > PAGES // 2
