"""Runs the training worker as the supervisor does: a subprocess fed a JSON request."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from simulacra_services.core.config import Settings
from simulacra_services.training.worker import protocol


def worker_settings(store, storage_dir: Path) -> Settings:
    return Settings(storage_backend="local", storage_dir=str(storage_dir), annotation_address=store.address, log_level="WARNING")


async def run_worker(request: dict, settings: Settings) -> tuple[int, list[dict]]:
    env = os.environ | settings.to_env() | {"SIMULACRA_TRAINING_THREADS": "1"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulacra_services.training.worker",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
    )
    out, _ = await process.communicate(json.dumps(request).encode() + b"\n")
    events = [e for e in map(protocol.parse_event, out.decode().splitlines()) if e]
    return process.returncode, events
