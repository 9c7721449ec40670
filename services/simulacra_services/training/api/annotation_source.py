"""Reads a dataset version through the annotation-store's gRPC contract (StreamItems), never its files.

The one place where annotation-store protobuf items become training tensors: images decoded and
resized, class labels from ClassLabel annotations (or box crops of chosen categories), attribute
values indexed, items split into train and holdout.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from simulacra_client.annotation import AnnotationClient
from simulacra_services.training.data import DataSpec, LoadedData, in_holdout
from simulacra_services.training.loop.run import TrainingData


class EmptyDataset(Exception):
    """No usable item (FAILED_PRECONDITION EMPTY_DATASET at the API)."""


class WrongKindDataset(Exception):
    """Items lack what the job needs: class labels or boxes (FAILED_PRECONDITION DATASET_UNSUITABLE)."""


def _image(data: bytes, box, height: int, width: int, channels: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("L" if channels == 1 else "RGB")
        if box is not None:
            image = image.crop((int(box.x), int(box.y), int(round(box.x + box.w)), int(round(box.y + box.h))))
        image = image.resize((width, height), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.float32).reshape(height, width, channels)
    return array.transpose(2, 0, 1) / 127.5 - 1.0


def _examples(item, spec: DataSpec, conditional: bool):
    """(label category id or 0, box or None) per training example of one item."""
    if spec.crop_categories:
        wanted = set(spec.crop_categories)
        return [(a.category_id, a.box) for a in item.annotations if a.WhichOneof("kind") == "box" and a.category_id in wanted]
    labels = {a.category_id for a in item.annotations if a.WhichOneof("kind") == "class_label"}
    if len(labels) == 1:
        return [(labels.pop(), None)]
    return [] if conditional else [(0, None)]


def load(
    client: AnnotationClient, spec: DataSpec, *, height: int, width: int, channels: int, conditional: bool, should_stop=None
) -> LoadedData:
    categories = {c.category_id: c.display_name for c in client.list_categories(spec.dataset_version)}
    rows: list[tuple[np.ndarray, int, tuple[str, ...], bool]] = []
    skipped = 0
    for streamed in client.stream_items(spec.dataset_version, filter=spec.filter):
        if should_stop is not None and should_stop():
            raise InterruptedError
        item = streamed.item
        examples = _examples(item, spec, conditional)
        if not examples:
            skipped += 1
            continue
        split = item.split or "train"
        if spec.holdout_split:
            if split not in (spec.train_split, spec.holdout_split):
                continue
            holdout = split == spec.holdout_split
        else:
            if split != spec.train_split:
                continue
            holdout = in_holdout(item.name, spec.holdout_fraction)
        values = tuple(item.attributes.get(name, "") for name in spec.attributes)
        for category, box in examples:
            rows.append((_image(item.image.data, box, height, width, channels), category, values, holdout))
        if spec.max_items and len(rows) >= spec.max_items:
            break
    if not rows:
        if skipped:
            raise WrongKindDataset(f"none of the {skipped} items has exactly one class label" if not spec.crop_categories
                                   else f"none of the {skipped} items has a box of categories {list(spec.crop_categories)}")
        raise EmptyDataset("the dataset version has no item that matches")
    used = sorted({category for _, category, _, _ in rows}) if conditional else [0]
    index = {category: i for i, category in enumerate(used)}
    attribute_values = tuple(
        (name, tuple(sorted({values[k] for _, _, values, _ in rows}))) for k, name in enumerate(spec.attributes)
    )
    lookups = [{value: i for i, value in enumerate(values)} for _, values in attribute_values]

    def tensors(selected):
        images = torch.from_numpy(np.stack([r[0] for r in selected])) if selected else torch.empty(0, channels, height, width)
        labels = torch.tensor([index.get(r[1], 0) for r in selected], dtype=torch.long)
        attributes = None
        if spec.attributes:
            attributes = torch.tensor([[lookups[k][v] for k, v in enumerate(r[2])] for r in selected], dtype=torch.long).view(-1, len(spec.attributes))
        return TrainingData(images, labels, attributes)

    train = tensors([r for r in rows if not r[3]])
    holdout = tensors([r for r in rows if r[3]])
    if len(train) == 0:
        raise EmptyDataset("every usable item is held out: no item left to train on")
    return LoadedData(
        train=train,
        holdout=holdout,
        class_names=tuple(categories.get(c, str(c)) for c in used) if conditional else (),
        category_ids=tuple(used) if conditional else (),
        attribute_values=attribute_values,
        skipped=skipped,
    )

