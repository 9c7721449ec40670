"""Where a training job's objects live, and the checkpoint listing (plain JSON, no torch).

The worker writes these objects (``loop.checkpoints`` holds the torch side); the server lists and
deletes them without loading a checkpoint.
"""

from __future__ import annotations

import json

from simulacra_services.core.storage import ObjectStore


def job_prefix(job_id: str) -> str:
    return f"training-jobs/{job_id}"


def checkpoint_key(prefix: str, step: int) -> str:
    return f"{prefix.rstrip('/')}/checkpoints/{step:010d}.pt"


def sidecar_key(checkpoint_key: str) -> str:
    """The checkpoint's JSON sidecar (step, losses, checksum), which listings read."""
    return checkpoint_key.removesuffix(".pt") + ".json"


def list_checkpoints(objects: ObjectStore, prefix: str) -> list[dict]:
    """Every checkpoint's sidecar, newest first."""
    keys = [o.key for o in objects.list(f"{prefix.rstrip('/')}/checkpoints/") if o.key.endswith(".json")]
    return [json.loads(objects.get(key)) for key in sorted(keys, reverse=True)]
