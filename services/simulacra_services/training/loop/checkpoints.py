"""Checkpoints in object storage: one object per checkpoint, written in one put (atomic on every
backend: a rename for local files, a single PUT for S3), with its sha256 verified on load."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json

import torch

from simulacra_services.core.storage import ObjectStore
from simulacra_services.training.layout import checkpoint_key, list_checkpoints, sidecar_key


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    step: int
    object_key: str
    sha256: str
    size_bytes: int

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


class CheckpointStore:
    def __init__(self, objects: ObjectStore, prefix: str) -> None:
        self.objects = objects
        self.prefix = prefix.rstrip("/")

    def key(self, step: int) -> str:
        return checkpoint_key(self.prefix, step)

    def save(self, step: int, state: dict, *, epoch: int = 0, losses: dict | None = None) -> CheckpointInfo:
        """Writes the state, then a small JSON sidecar (step, losses, checksum) that listings read."""
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
        key = self.key(step)
        self.objects.put(key, data, content_type="application/octet-stream")
        info = CheckpointInfo(step, key, hashlib.sha256(data).hexdigest(), len(data))
        sidecar = info.to_json() | {
            "epoch": epoch, "losses": losses or {}, "create_time": dt.datetime.now(dt.timezone.utc).isoformat()
        }
        self.objects.put(sidecar_key(key), json.dumps(sidecar).encode(), content_type="application/json")
        return info

    def list(self) -> list[dict]:
        """Every checkpoint's sidecar, newest first."""
        return list_checkpoints(self.objects, self.prefix)

    def load(self, info: CheckpointInfo) -> dict:
        data = self.objects.get(info.object_key)
        if hashlib.sha256(data).hexdigest() != info.sha256:
            raise ValueError(f"checkpoint {info.object_key} does not match its sha256")
        return torch.load(io.BytesIO(data), weights_only=True)
