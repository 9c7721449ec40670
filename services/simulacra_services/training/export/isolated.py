"""The check of an imported ONNX generator, run in a process of its own.

The server imports neither onnx nor onnxruntime: ``inspect_isolated`` starts ``python -m
simulacra_services.training.export.inspect``, gives it the file on stdin and reads one JSON line.
A file that crashes or hangs the ONNX runtime takes only that process down.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sys

INSPECT_MODULE = "simulacra_services.training.export.inspect"
MAX_ONNX_BYTES = 64 * 1024 * 1024
TIMEOUT_SECONDS = 120.0


class SignatureMismatch(ValueError):
    """The file is not a generator with the fixed signature (INVALID_ARGUMENT ONNX_SIGNATURE_MISMATCH)."""


@dataclasses.dataclass(frozen=True)
class FoundSignature:
    latent_dim: int
    channels: int
    height: int
    width: int
    attribute_count: int
    opset: int


async def inspect_isolated(data: bytes, num_classes: int, *, timeout: float = TIMEOUT_SECONDS) -> FoundSignature:
    if len(data) > MAX_ONNX_BYTES:
        raise SignatureMismatch(f"the file has {len(data)} bytes, at most {MAX_ONNX_BYTES}")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", INSPECT_MODULE, str(num_classes),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(data), timeout)
    except TimeoutError:
        await _kill(process)
        raise SignatureMismatch(f"the model did not load and run a batch of 2 within {timeout:.0f} s") from None
    except BaseException:  # cancelled: the caller went away
        await _kill(process)
        raise
    if process.returncode < 0:
        raise SignatureMismatch(f"the ONNX runtime died on the file (signal {-process.returncode})")
    lines = out.decode(errors="replace").strip().splitlines()
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"the ONNX inspector failed (exit {process.returncode}): {err.decode(errors='replace')[-2000:]}")
    answer = json.loads(lines[-1])
    if "mismatch" in answer:
        raise SignatureMismatch(answer["mismatch"])
    return FoundSignature(**answer["signature"])


async def _kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    await process.wait()
