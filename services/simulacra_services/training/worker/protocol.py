"""What the supervisor and the worker say to each other: one JSON object a line.

Request (stdin, one object): job_id, spec (the stored job spec), checkpoint (CheckpointInfo JSON
or null: resume from it), attempt. Events (stdout): {"type": ...} with types below. Exit codes:
0 done (a "result" or "stopped" event was sent), FAILED_EXIT with an "error" event for a precise
failure; anything else is a crash, and the supervisor restarts from the latest checkpoint.
"""

from __future__ import annotations

import json
from typing import IO, Any

STAGE, DATA, PROGRESS, CHECKPOINT, PREVIEW, RESULT, STOPPED, ERROR = (
    "stage", "data", "progress", "checkpoint", "preview", "result", "stopped", "error",
)
FAILED_EXIT = 3


class EventWriter:
    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def __call__(self, type_: str, **fields: Any) -> None:
        self.stream.write(json.dumps({"type": type_, **fields}, allow_nan=True) + "\n")
        self.stream.flush()


def parse_event(line: str) -> dict | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "type" in event else None
