"""The COCO sample both the pure COCO tests and the job tests read: three images, two
categories (one with a keypoint schema), boxes, multi-part polygons, compressed and
uncompressed RLE, crowds and keypoints."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as coco_mask

from simulacra_services.annotation.formats import rle

KEYPOINTS = ["nose", "left_eye", "right_eye", "left_ear", "right_ear"]


def blob_mask(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), np.uint8)
    y, x = rng.integers(2, height - 16), rng.integers(2, width - 16)
    mask[y : y + 12, x : x + 10] = 1
    mask[rng.random((height, width)) < 0.03] = 1
    return mask


def coco_document() -> dict:
    """Three images, two categories (one with a keypoint schema), every COCO annotation form."""
    compressed = coco_mask.encode(np.asfortranarray(blob_mask(60, 80, 1)))
    crowd = coco_mask.encode(np.asfortranarray(blob_mask(60, 80, 2)))
    crowd_compressed = coco_mask.encode(np.asfortranarray(blob_mask(50, 100, 3)))
    return {
        "info": {"description": "simulacra test"},
        "images": [
            {"id": 11, "file_name": "a/000011.png", "width": 80, "height": 60},
            {"id": 12, "file_name": "a/000012.png", "width": 80, "height": 60},
            {"id": 13, "file_name": "b/000013.png", "width": 100, "height": 50},
        ],
        "categories": [
            {"id": 1, "name": "car", "supercategory": "vehicle"},
            {"id": 3, "name": "person", "supercategory": "person", "keypoints": KEYPOINTS, "skeleton": [[1, 2], [1, 3], [2, 4], [3, 5]]},
        ],
        "annotations": [
            {"id": 101, "image_id": 11, "category_id": 1, "bbox": [1.5, 2.0, 30.25, 20.0], "area": 605.0, "iscrowd": 0, "segmentation": []},
            {
                "id": 102,
                "image_id": 11,
                "category_id": 1,
                "bbox": [10.0, 10.0, 30.0, 30.0],
                "area": 390.5,
                "iscrowd": 0,
                "segmentation": [[10.0, 10.0, 40.0, 10.0, 40.0, 25.0], [10.0, 30.0, 25.0, 30.0, 25.0, 40.0, 10.0, 40.0]],
            },
            {
                "id": 103,
                "image_id": 12,
                "category_id": 1,
                "bbox": [float(v) for v in coco_mask.toBbox(crowd)],
                "area": float(coco_mask.area(crowd)),
                "iscrowd": 1,
                "segmentation": {"size": [60, 80], "counts": rle.decompress(crowd["counts"].decode())},
            },
            {
                "id": 104,
                "image_id": 12,
                "category_id": 1,
                "bbox": [float(v) for v in coco_mask.toBbox(compressed)],
                "area": float(coco_mask.area(compressed)),
                "iscrowd": 0,
                "segmentation": {"size": [60, 80], "counts": compressed["counts"].decode()},
            },
            {
                "id": 105,
                "image_id": 13,
                "category_id": 3,
                "bbox": [20.0, 5.0, 30.0, 40.0],
                "area": 700.0,
                "iscrowd": 0,
                "segmentation": [[20.0, 5.0, 50.0, 5.0, 50.0, 45.0, 20.0, 45.0]],
                "keypoints": [30, 10, 2, 28, 8, 2, 32, 8, 1, 0, 0, 0, 35, 9, 2],
                "num_keypoints": 4,
            },
            {
                "id": 106,
                "image_id": 13,
                "category_id": 3,
                "bbox": [60.0, 5.0, 20.0, 30.0],
                "area": 600.0,
                "iscrowd": 0,
                "keypoints": [70, 10, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                "num_keypoints": 1,
            },
            {
                "id": 107,
                "image_id": 13,
                "category_id": 1,
                "bbox": [float(v) for v in coco_mask.toBbox(crowd_compressed)],
                "area": float(coco_mask.area(crowd_compressed)),
                "iscrowd": 1,
                "segmentation": {"size": [50, 100], "counts": crowd_compressed["counts"].decode()},
            },
        ],
    }
