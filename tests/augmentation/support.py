"""Small builders shared by the augmentation tests."""

from __future__ import annotations

import cv2
import numpy as np

from simulacra_services.annotation.domain.model import Category


def photo(height: int = 96, width: int = 128, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A smooth random uint8 image (blurred noise: interpolation differences stay small)."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (7, 7), 2).reshape(height, width, channels)


PERSON = Category(
    category_id=1,
    display_name="person",
    keypoint_names=("nose", "left_eye", "right_eye"),
    flip_pairs=((1, 2),),
)
CAR = Category(category_id=2, display_name="car")
CATEGORIES = {1: PERSON, 2: CAR}


def fixed(value: float) -> dict[str, float]:
    return {"min": value, "max": value}
