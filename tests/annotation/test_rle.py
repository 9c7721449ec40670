"""COCO RLE against pycocotools, the reference implementation, on random masks."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from simulacra_services.annotation.formats import rle
from simulacra_services.core import errors

# pycocotools calls numpy with a keyword that numpy 2 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")


def random_masks(seed: int, count: int) -> list[np.ndarray]:
    """Masks of varied sizes and densities, including blobs, empty and full."""
    rng = np.random.default_rng(seed)
    masks = []
    for i in range(count):
        height, width = int(rng.integers(1, 60)), int(rng.integers(1, 60))
        density = rng.uniform(0.0, 1.0)
        noise = rng.random((height, width)) < density
        if i % 3 == 0:  # smooth blobs: long runs, large differences between runs
            noise = np.zeros((height, width), bool)
            noise[rng.integers(0, height) :, : rng.integers(0, width + 1)] = True
        masks.append(noise)
    masks += [np.zeros((5, 7), bool), np.ones((5, 7), bool), np.ones((1, 1), bool), np.zeros((1, 1), bool)]
    large = np.zeros((400, 300), bool)
    large[10:390, 20:280] = True  # runs longer than 2^5 and 2^10: multi-group numbers
    masks.append(large)
    return masks


def theirs(mask: np.ndarray) -> dict:
    return coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_encode_compress_decode_area_bbox_match_pycocotools(seed: int) -> None:
    for mask in random_masks(seed, 60):
        height, width = mask.shape
        reference = theirs(mask)
        counts = rle.encode(mask)
        assert sum(counts) == height * width
        assert rle.compress(counts) == reference["counts"].decode("ascii")
        assert rle.decompress(reference["counts"].decode("ascii")) == counts
        np.testing.assert_array_equal(rle.decode(counts, height, width), coco_mask.decode(reference))
        assert rle.area(counts) == int(coco_mask.area(reference))
        assert rle.to_bbox(counts, height) == tuple(float(v) for v in coco_mask.toBbox(reference))


def test_uncompressed_counts_are_what_pycocotools_reads() -> None:
    mask = random_masks(7, 1)[0]
    height, width = mask.shape
    counts = rle.encode(mask)
    from_uncompressed = coco_mask.frPyObjects({"counts": counts, "size": [height, width]}, height, width)
    np.testing.assert_array_equal(coco_mask.decode(from_uncompressed), mask.astype(np.uint8))


def test_mask_starting_with_one_begins_with_zero_run() -> None:
    mask = np.array([[1, 0], [1, 1]], bool)
    assert rle.encode(mask) == [0, 2, 1, 1]


def test_counts_of_accepts_both_forms() -> None:
    mask = random_masks(3, 1)[0]
    height, width = mask.shape
    counts = rle.encode(mask)
    assert rle.counts_of(counts, height, width) == counts
    assert rle.counts_of(rle.compress(counts), height, width) == counts


def test_wrong_total_is_invalid_rle() -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        rle.counts_of([3, 4], 2, 2, field="annotations[0].mask")
    assert caught.value.reason == "INVALID_RLE"
    assert caught.value.metadata == {"field": "annotations[0].mask", "runs_sum": "7", "pixels": "4"}


def test_negative_run_is_invalid_rle() -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        rle.check_counts([2, -1, 3], 2, 2)
    assert caught.value.reason == "INVALID_RLE"
    assert caught.value.metadata["index"] == "1"


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("0 1", "invalid character"),  # space is below '0'
        ("0\x7f", "invalid character"),
        ("0o", "ends in the middle"),  # 'o' = 48 + 63: continuation bit set, then nothing
        ("@", "negative run"),  # 0x10 without continuation: the sign bit, -16
        ("000@", "negative run"),  # fourth run: 0 + (-16) relative to the second
    ],
)
def test_malformed_compressed_string_is_invalid_rle(text: str, detail: str) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        rle.decompress(text)
    assert caught.value.reason == "INVALID_RLE"
    assert detail in caught.value.message


def test_decompress_bounds_the_number_of_runs() -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        rle.counts_of("1" * 100, 2, 2)
    assert caught.value.metadata["limit"] == "5"
