"""Process logging: one JSON object a line (or readable text), alike in every service.

Code that wants structured values passes them as ``extra={"fields": {...}}``;
the JSON format puts them at the top level of the line, the text format
appends them as ``key=value``. Log collectors can then filter on ``method`` or
``code`` without parsing messages.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

from simulacra_services.core.config import Settings

FIELDS = "fields"
"""Name of the ``extra`` entry holding a record's structured values."""

_OURS = "_simulacra_handler"


def configure_logging(settings: Settings, *, stream: TextIO | None = None) -> None:
    """Send every log record of the process to ``stream`` (stderr) in ``settings.log_format``.

    Calling it again replaces the handler it installed before (and only that
    one: handlers others added, such as pytest's, stay).
    """
    level = logging.getLevelName(settings.log_level.upper())
    if not isinstance(level, int):
        raise ValueError(f"SIMULACRA_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {settings.log_level!r}")
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    setattr(handler, _OURS, True)
    root.addHandler(handler)
    root.setLevel(level)
    # grpc's Cython layer logs each event-loop lookup at DEBUG: noise, not signal.
    logging.getLogger("grpc._cython.cygrpc").setLevel(max(level, logging.INFO))


def is_configured() -> bool:
    """Whether ``configure_logging`` has installed its handler in this process."""
    return any(getattr(h, _OURS, False) for h in logging.getLogger().handlers)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, FIELDS, None)
    return dict(fields) if isinstance(fields, dict) else {}


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, then the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _fields(record).items():
            # A field never hides one of the keys above.
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...`` for people reading a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        fields = _fields(record)
        if fields:
            line += " " + " ".join(f"{key}={value}" for key, value in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line
