"""Object keys: what a key may look like, checked before any backend sees it.

A key is a relative, '/'-separated path such as ``datasets/ds-1/items/0001.png``.
The rules are those of the strictest backend (local files), so that a key
accepted by one backend is accepted by every other one: no empty, '.' or '..'
segments (path traversal), no backslash (a separator on Windows), no control
characters (log and header injection), and none of the names the local
backend reserves for its own files.
"""

from __future__ import annotations

import re

from simulacra_services.core import errors

MAX_KEY_BYTES = 1024
"""Longest key in UTF-8 bytes (the S3 limit)."""

MAX_SEGMENT_BYTES = 200
"""Longest segment: file systems allow 255 bytes a name, less the local backend's suffix."""

OBJECT_SUFFIX = ".simulacra-object"
"""The local backend stores key ``a/b`` in file ``a/b.simulacra-object``, so that keys ``a``
and ``a/b`` can both exist (file ``a.simulacra-object`` beside directory ``a``)."""

TEMP_PREFIX = ".simulacra-tmp-"
"""The local backend writes each object to a temporary file with this prefix first."""

_CONTROL = re.compile("[\x00-\x1f\x7f]")
"""A control character (one regex search: every blob read checks its key, a scan in Python cost ~10 us a key)."""


def validate_key(key: str) -> str:
    """Return ``key`` unchanged if it is a valid object key, else raise InvalidArgument."""
    _check_text(key, "INVALID_OBJECT_KEY", "key")
    if not key:
        raise _invalid(key, "an object key must not be empty")
    for segment in key.split("/"):
        _check_segment(key, segment)
    return key


def is_valid_key(key: str) -> bool:
    try:
        validate_key(key)
    except errors.InvalidArgument:
        return False
    return True


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` unchanged if it may start a key ('' lists everything).

    A prefix is a key in which the last segment may be partial (``images/ca``
    matches ``images/cat.png``) or empty (``images/``). Only the complete
    segments are held to the full rules.
    """
    _check_text(prefix, "INVALID_OBJECT_PREFIX", "prefix")
    *complete, _partial = prefix.split("/")
    for segment in complete:
        _check_segment(prefix, segment, reason="INVALID_OBJECT_PREFIX", what="prefix")
    return prefix


def _check_text(text: object, reason: str, what: str) -> None:
    if not isinstance(text, str):
        raise errors.InvalidArgument(reason, f"an object {what} must be a string, got {type(text).__name__}", {what: repr(text)})
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise errors.InvalidArgument(reason, f"an object {what} must be valid Unicode text", {what: repr(text)}) from None
    if size > MAX_KEY_BYTES:
        raise errors.InvalidArgument(
            reason, f"an object {what} may be at most {MAX_KEY_BYTES} bytes in UTF-8, got {size}",
            {what: errors.shown(text, 64), "limit": MAX_KEY_BYTES, "size": size},
        )
    if text.startswith("/"):
        raise errors.InvalidArgument(reason, f"an object {what} must be relative: remove the leading '/'", {what: text})
    if "\\" in text:
        raise errors.InvalidArgument(reason, f"an object {what} must use '/' as separator, not '\\'", {what: text})
    bad = _CONTROL.search(text)
    if bad is not None:
        raise errors.InvalidArgument(reason, f"an object {what} must not contain control character {bad.group()!r}", {what: repr(text)})


def _check_segment(key: str, segment: str, *, reason: str = "INVALID_OBJECT_KEY", what: str = "key") -> None:
    if segment == "":
        raise errors.InvalidArgument(reason, f"an object {what} must not contain empty segments ('//' or a trailing '/')", {what: key})
    if segment in (".", ".."):
        raise errors.InvalidArgument(reason, f"an object {what} must not contain '.' or '..' segments", {what: key})
    if segment.startswith(TEMP_PREFIX) or segment.endswith(OBJECT_SUFFIX):
        raise errors.InvalidArgument(
            reason, f"an object {what} must not use the reserved names '{TEMP_PREFIX}*' or '*{OBJECT_SUFFIX}'", {what: key}
        )
    if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
        raise errors.InvalidArgument(
            reason, f"each segment of an object {what} may be at most {MAX_SEGMENT_BYTES} bytes in UTF-8",
            {what: errors.shown(key, 64), "limit": MAX_SEGMENT_BYTES},
        )


def _invalid(key: str, message: str) -> errors.SimulacraError:
    return errors.InvalidArgument("INVALID_OBJECT_KEY", message, {"key": key})
