"""What a job is, independent of any service: states, the record, progress, errors. No protobuf here.

State strings equal the names of ``simulacra.common.v1.JobState`` so that an
api/ layer converts with ``JobState.Value(record.state)``.

    QUEUED ──claim──> RUNNING ──> SUCCEEDED | FAILED
      │                 │  └──pause asked──> PAUSED ──resume──> QUEUED
      │                 └──cancel asked──> CANCELLING ──> CANCELLED
      └──cancel──> CANCELLED            (PAUSED ──cancel──> CANCELLING ──discard──> CANCELLED)

SUCCEEDED, FAILED and CANCELLED are terminal; a resumable job (training) may
leave FAILED or CANCELLED through ``resume`` and run again from its checkpoint.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

QUEUED = "JOB_STATE_QUEUED"
RUNNING = "JOB_STATE_RUNNING"
PAUSED = "JOB_STATE_PAUSED"
CANCELLING = "JOB_STATE_CANCELLING"
CANCELLED = "JOB_STATE_CANCELLED"
SUCCEEDED = "JOB_STATE_SUCCEEDED"
FAILED = "JOB_STATE_FAILED"

STATES = (QUEUED, RUNNING, PAUSED, CANCELLING, CANCELLED, SUCCEEDED, FAILED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
ACTIVE = frozenset({QUEUED, RUNNING, CANCELLING})
"""States in which a runner owes the job some work (run it, or finish its cancellation)."""

# The pending request a runner reads at its next ``ctx.check()``.
REQUEST_CANCEL = "cancel"
REQUEST_PAUSE = "pause"

MAX_MESSAGE_CHARS = 1024
"""Progress messages are cut to this many characters."""

# google.rpc.Code values used for job errors (no protobuf import in this layer).
CODE_ABORTED = 10
CODE_INTERNAL = 13


def short_state(state: str) -> str:
    """``JOB_STATE_RUNNING`` -> ``RUNNING`` (for messages)."""
    return state.removeprefix("JOB_STATE_")


@dataclass(frozen=True)
class Progress:
    """How far a job got: ``done`` of ``total`` units (0: unknown), what it does now, and free-form detail."""

    done: int = 0
    total: int = 0
    message: str = ""
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobError:
    """Why a job failed, shaped like a gRPC error: google.rpc.Code value, stable reason, message, metadata."""

    code: int
    reason: str
    message: str
    metadata: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "reason": self.reason, "message": self.message, "metadata": dict(self.metadata)}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> JobError:
        return cls(int(value["code"]), str(value["reason"]), str(value["message"]), dict(value.get("metadata") or {}))


@dataclass(frozen=True)
class JobRecord:
    """One job as stored. ``spec``, ``result``, ``checkpoint`` and ``progress.detail`` are JSON values."""

    job_id: str
    kind: str
    parent: str
    state: str
    spec: Mapping[str, Any]
    progress: Progress
    result: Mapping[str, Any]
    error: JobError | None
    attempt: int
    """How many times a runner has started the job (0 while it never ran)."""
    checkpoint: Mapping[str, Any] | None
    """What the last attempt saved with ``ctx.save_checkpoint`` (None: nothing)."""
    create_time: dt.datetime
    start_time: dt.datetime | None
    end_time: dt.datetime | None
    update_time: dt.datetime
    label: str = ""
    """A short tag the service chose at creation to filter on (e.g. a source format)."""
    request_id: str = ""
    requested: str = ""
    """A pending cancel or pause request ("cancel", "pause", or "")."""
    owner: str = ""
    """The runner holding the job's lease ("" when none)."""
    lease_expire_time: dt.datetime | None = None
    revision: int = 0
    """Bumped by every change to the row: watchers compare it."""

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL
