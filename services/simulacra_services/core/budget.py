"""A memory budget for work whose size is known before it starts (image decoding above all).

Each decode is bounded on its own (the pixel limit), but not the sum: twelve
8192x8192 PNG uploads at once would hold 12 decoded images. ``PixelBudget``
is a counting semaphore on pixels in flight, shared by every thread of a
process: a decode takes its pixel count before it starts and gives it back
when it ends, waiting while the budget is spent. A request larger than the
whole budget waits until nothing else is in flight and then runs alone, so
that any single image the server accepts can always be decoded.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class PixelBudget:
    """At most ``total`` pixels in flight at once (one oversized request alone)."""

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError(f"a pixel budget must be positive, got {total}")
        self.total = total
        self._in_flight = 0
        self._changed = threading.Condition()

    @property
    def in_flight(self) -> int:
        """Pixels held right now (a gauge for metrics and tests)."""
        return self._in_flight

    def acquire(self, pixels: int) -> int:
        """Block until ``pixels`` fit; returns what was taken (to hand to ``release``)."""
        taken = min(max(pixels, 0), self.total)  # larger requests run alone
        with self._changed:
            self._changed.wait_for(lambda: self._in_flight + taken <= self.total)
            self._in_flight += taken
        return taken

    def release(self, taken: int) -> None:
        with self._changed:
            self._in_flight -= taken
            self._changed.notify_all()

    @contextlib.contextmanager
    def held(self, pixels: int) -> Iterator[None]:
        taken = self.acquire(pixels)
        try:
            yield
        finally:
            self.release(taken)
