"""The batched torch path (CPU build here) against the numpy/OpenCV path, within the stated tolerance."""

from __future__ import annotations

import numpy as np
import pytest

from simulacra_services.annotation.domain.model import Annotation, Box
from simulacra_services.augmentation.engine import Augmenter, Item, parse_spec
from simulacra_services.augmentation.engine.batched import TorchAugmenter
from tests.augmentation.support import CATEGORIES, fixed, photo

PIPELINES = {
    "crop-flip-affine-jitter": [
        {"random_resized_crop": {"height": 48, "width": 48, "scale": {"min": 0.4, "max": 1}}},
        {"horizontal_flip": {}, "probability": 0.5},
        {"affine": {"rotate_degrees": {"min": -20, "max": 20}, "scale": {"min": 0.9, "max": 1.2}}},
        {"color_jitter": {"brightness": {"min": 0.7, "max": 1.3}, "contrast": {"min": 0.7, "max": 1.3}, "saturation": {"min": 0.5, "max": 1.5}, "hue": {"min": -0.1, "max": 0.1}}},
    ],
    "perspective-fill-pixel-ops": [
        {"perspective": {"scale": {"min": 0.05, "max": 0.15}, "fill_value": 40}},
        {"brightness_contrast": {"brightness": {"min": -0.1, "max": 0.1}, "contrast": {"min": 0.8, "max": 1.2}}},
        {"gamma": {"gamma": {"min": 0.7, "max": 1.4}}},
        {"cutout": {"count": 2}},
        {"gaussian_noise": {"std": fixed(0.03)}},
    ],
    "nearest-reflect-grey": [
        {"rotate": {"angle_degrees": {"min": -30, "max": 30}, "interpolation": "INTERPOLATION_NEAREST", "border_mode": "BORDER_MODE_REPLICATE"}},
        {"grayscale": {}},
        {"vertical_flip": {}, "probability": 0.5},
    ],
    "normalize": [
        {"resize": {"height": 32, "width": 40}},
        {"normalize": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}},
    ],
}


def items(channels: int = 3, dtype: type = np.uint8) -> list[Item]:
    out = []
    for index in range(12):
        image = photo(40, 56, channels=channels, seed=index)
        if dtype == np.float32:
            image = image.astype(np.float32) / 255.0
        out.append(Item(image, (Annotation(Box(5, 6, 20, 15), 2, id="b"),), key=f"k{index}"))
    return out


@pytest.mark.parametrize("name", list(PIPELINES))
@pytest.mark.parametrize(("channels", "dtype"), [(3, np.uint8), (1, np.uint8), (3, np.float32)])
def test_torch_path_matches_the_numpy_path(name: str, channels: int, dtype: type) -> None:
    ops = PIPELINES[name]
    if name == "normalize" and channels == 1:
        ops = [ops[0], {"normalize": {"mean": [0.45], "std": [0.2]}}]
    augmenter = Augmenter(parse_spec({"ops": ops}), CATEGORIES)
    batch = items(channels, dtype)
    seeds = [augmenter.item_seed(5, item.key, i) for i, item in enumerate(batch)]
    reference = [augmenter.run(item, seed) for item, seed in zip(batch, seeds)]
    torched = TorchAugmenter(augmenter, "cpu").run_batch(batch, seeds)
    for ours, theirs in zip(torched, reference):
        assert (ours.seed, ours.applied_paths, ours.annotations) == (theirs.seed, theirs.applied_paths, theirs.annotations)
        assert ours.image.shape == theirs.image.shape and ours.image.dtype == theirs.image.dtype
        difference = np.abs(ours.image.astype(np.float64) - theirs.image.astype(np.float64))
        # One intensity level, in the output's units.
        if name == "normalize":
            unit = 1.0 / 255.0 / 0.2
        else:
            unit = 1.0 if theirs.image.dtype == np.uint8 else 1.0 / 255.0
        # Float weights (torch) against OpenCV's 1/32-pixel fixed point: a few levels at most, rarely.
        assert difference.max() <= 3 * unit + 1e-6
        assert difference.mean() <= 0.5 * unit


def test_ops_without_a_torch_version_fall_back_per_item() -> None:
    augmenter = Augmenter(parse_spec({"ops": [{"resize": {"height": 32, "width": 32}}, {"one_of": {"ops": [{"fog": {}}, {"gamma": {}}]}}]}))
    batch = items()
    seeds = list(range(len(batch)))
    torched = TorchAugmenter(augmenter, "cpu").run_batch(batch, seeds)
    reference = [augmenter.run(item, seed) for item, seed in zip(batch, seeds)]
    fog = [i for i, r in enumerate(reference) if r.applied_paths[-1] == "1.0"]
    assert fog and all(torched[i].image.tobytes() == reference[i].image.tobytes() for i in fog)


def test_the_service_imports_torch_only_for_a_stream_that_asks() -> None:
    import subprocess
    import sys

    code = "import sys, simulacra_services.augmentation.service, simulacra_services.augmentation.engine; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr
