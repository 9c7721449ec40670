"""The decode budget: pixels in flight never exceed it, a waiting decode starts when pixels
come back, and an image larger than the whole budget runs alone instead of never."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image

from simulacra_services.annotation.persistence.blobs import inspect_image
from simulacra_services.core.budget import PixelBudget

pytestmark = pytest.mark.timeout(60)
SETTLE = 0.3  # how long a blocked thread gets to show that it is blocked


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((height, width), dtype=np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_decode_waits_while_the_budget_is_spent_and_runs_once_it_comes_back() -> None:
    budget = PixelBudget(100 * 100)
    results: list[object] = []
    worker = threading.Thread(target=lambda: results.append(inspect_image(_png(80, 80), budget=budget)))
    held = budget.acquire(4000)  # 4,000 held: 6,400 more do not fit in 10,000
    worker.start()
    worker.join(SETTLE)
    assert worker.is_alive() and not results and budget.in_flight == 4000
    budget.release(held)
    worker.join(30)
    assert not worker.is_alive() and results[0].width == 80  # type: ignore[attr-defined]
    assert budget.in_flight == 0


def test_an_image_larger_than_the_budget_runs_alone() -> None:
    budget = PixelBudget(10)
    assert inspect_image(_png(40, 30), budget=budget).height == 30
    held = budget.acquire(1)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (inspect_image(_png(40, 30), budget=budget), done.set()))
    worker.start()
    assert not done.wait(SETTLE)  # one pixel in flight: the large image waits for it
    budget.release(held)
    assert done.wait(30) and budget.in_flight == 0


def test_a_budget_must_be_positive() -> None:
    with pytest.raises(ValueError):
        PixelBudget(0)
