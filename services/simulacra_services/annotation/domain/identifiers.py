"""Validation of what is not a shape: attributes, categories, dataset and item ids, splits, relative paths.

Each raises ``errors.InvalidArgument`` with a stable reason and metadata ``field``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from simulacra_services.annotation.domain import names
from simulacra_services.annotation.domain.checks import CONTROL, DEFAULT_LIMITS, KEY, MAX_CATEGORY_ID, Limits, invalid
from simulacra_services.annotation.domain.model import Category
from simulacra_services.core import errors

_DATASET_ID = re.compile(names.DATASET_ID)
_ITEM_ID = re.compile(names.ITEM_ID)
_SPLIT = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


def validate_attributes(attributes: Mapping[str, str], path: str = "attributes", limits: Limits = DEFAULT_LIMITS) -> None:
    if len(attributes) > limits.max_attributes:
        raise invalid("INVALID_ATTRIBUTES", path, f"{len(attributes)} entries, at most {limits.max_attributes}", count=len(attributes), limit=limits.max_attributes)
    for key, value in attributes.items():
        if not KEY.fullmatch(key):
            raise invalid("INVALID_ATTRIBUTES", f"{path}[{key!r}]", "keys are 1-64 characters of a-z 0-9 _, not starting with a digit", key=key)
        if len(value) > limits.max_attribute_value_chars:
            raise invalid(
                "INVALID_ATTRIBUTES",
                f"{path}[{key!r}]",
                f"value of {len(value)} characters, at most {limits.max_attribute_value_chars}",
                key=key,
                limit=limits.max_attribute_value_chars,
            )


def _check_name(value: str, field: str, reason: str, limits: Limits, *, required: bool) -> None:
    if (required and not value) or len(value) > limits.max_name_chars or CONTROL.search(value):
        need = "1" if required else "0"
        raise invalid(reason, field, f"needs {need}-{limits.max_name_chars} printable characters", limit=limits.max_name_chars)


def validate_category(category: Category, path: str = "category", limits: Limits = DEFAULT_LIMITS) -> None:
    if not 1 <= category.category_id <= MAX_CATEGORY_ID:
        raise invalid(
            "INVALID_CATEGORY",
            f"{path}.category_id",
            f"category ids run from 1 to {MAX_CATEGORY_ID}, got {category.category_id}",
            category_id=category.category_id,
        )
    _check_name(category.display_name, f"{path}.display_name", "INVALID_CATEGORY", limits, required=True)
    _check_name(category.supercategory, f"{path}.supercategory", "INVALID_CATEGORY", limits, required=False)
    names = category.keypoint_names
    if len(names) > limits.max_keypoints:
        raise invalid("INVALID_CATEGORY", f"{path}.keypoint_names", f"{len(names)} keypoints, at most {limits.max_keypoints}", limit=limits.max_keypoints)
    for index, name in enumerate(names):
        _check_name(name, f"{path}.keypoint_names[{index}]", "INVALID_CATEGORY", limits, required=True)
        if name in names[:index]:
            raise invalid("INVALID_CATEGORY", f"{path}.keypoint_names[{index}]", f"keypoint name {name!r} appears twice", name=name)
    for pairs_name, pairs in (("skeleton", category.skeleton), ("flip_pairs", category.flip_pairs)):
        for index, (first, second) in enumerate(pairs):
            pair_field = f"{path}.{pairs_name}[{index}]"
            if not (0 <= first < len(names) and 0 <= second < len(names)):
                raise invalid(
                    "INVALID_CATEGORY",
                    pair_field,
                    f"indices ({first}, {second}) must be 0-based indices of the {len(names)} keypoint names",
                    count=len(names),
                )
            if first == second:
                raise invalid("INVALID_CATEGORY", pair_field, f"pairs two different keypoints, got ({first}, {second})")
    flipped = [index for pair in category.flip_pairs for index in pair]
    if len(flipped) != len(set(flipped)):
        raise invalid("INVALID_CATEGORY", f"{path}.flip_pairs", "each keypoint may belong to at most one flip pair")


def category_schema(category: Category) -> tuple[object, ...]:
    """What annotations of a category depend on: its name, supercategory and keypoint schema.

    Two categories with the same id agree when their schemas are equal. The
    import planner and ``store.ensure_categories`` both decide CATEGORY_CONFLICT
    with this one function, so a difference (a flip pair, say) is a conflict
    wherever it is found. Lists and tuples compare alike (rows hold JSON lists).
    """
    return (
        category.display_name,
        category.supercategory,
        tuple(category.keypoint_names),
        tuple((int(a), int(b)) for a, b in category.skeleton),
        tuple((int(a), int(b)) for a, b in category.flip_pairs),
    )


def categories_agree(first: Category, second: Category) -> bool:
    """The same id and the same schema (see ``category_schema``)."""
    return first.category_id == second.category_id and category_schema(first) == category_schema(second)


def validate_categories(categories: Iterable[Category], path: str = "categories", limits: Limits = DEFAULT_LIMITS) -> None:
    """Each category valid; ids and display names unique."""
    ids: dict[int, int] = {}
    names: dict[str, int] = {}
    for index, category in enumerate(categories):
        field = f"{path}[{index}]"
        validate_category(category, field, limits)
        if category.category_id in ids:
            raise invalid(
                "DUPLICATE_CATEGORY",
                f"{field}.category_id",
                f"id {category.category_id} is already used by {path}[{ids[category.category_id]}]",
                category_id=category.category_id,
            )
        if category.display_name in names:
            raise invalid(
                "DUPLICATE_CATEGORY",
                f"{field}.display_name",
                f"name {category.display_name!r} is already used by {path}[{names[category.display_name]}]",
                display_name=category.display_name,
            )
        ids[category.category_id] = index
        names[category.display_name] = index


def validate_dataset_id(dataset_id: str, field: str = "dataset_id") -> None:
    if not _DATASET_ID.fullmatch(dataset_id):
        raise invalid(
            "INVALID_DATASET_ID",
            field,
            f"{dataset_id!r} is not a dataset id: 1-63 characters of a-z 0-9 -, starting with a letter",
            dataset_id=dataset_id,
        )


def validate_item_id(item_id: str, field: str = "item_id") -> None:
    if not _ITEM_ID.fullmatch(item_id) or ".." in item_id:
        raise invalid(
            "INVALID_ITEM_ID",
            field,
            f"{item_id!r} is not an item id: 1-128 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit, no '..'",
            item_id=item_id,
        )


def normalize_split(split: str, field: str = "split") -> str:
    """The split to store: empty means "train"."""
    if not split:
        return "train"
    if not _SPLIT.fullmatch(split):
        raise invalid("INVALID_SPLIT", field, f"{split!r} is not a split name: 1-32 characters of a-z 0-9 _ -", split=split)
    return split


def validate_relative_path(value: str, field: str = "path", limits: Limits = DEFAULT_LIMITS) -> None:
    """A file name or manifest path: relative, "/"-separated, no "..", no control characters."""
    parts = value.split("/")
    if (
        not value
        or len(value) > limits.max_path_chars
        or value.startswith("/")
        or "\\" in value
        or CONTROL.search(value)
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise invalid(
            "INVALID_PATH",
            field,
            f"{errors.shown(value)!r} is not a relative path: 1-{limits.max_path_chars} characters, '/' separators, no '..', '.', empty parts, leading '/', backslashes or control characters",
            limit=limits.max_path_chars,
        )
