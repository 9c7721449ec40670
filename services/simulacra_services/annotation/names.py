"""Resource names of the annotation-store (AIP-122), parsed and built.

Every name from a client is parsed here before anything is looked up, so a
malformed one is INVALID_ARGUMENT (reason INVALID_NAME, with the field and
the expected pattern) and never reaches a query or an object key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from simulacra_services.core import errors
from simulacra_services.core.api.names import MAX_NAME_CHARS, invalid_name

DATASET_ID = r"[a-z][a-z0-9-]{0,62}"
"""What a dataset id may be: the one rule, used by names, validation and lineage checks."""
ITEM_ID = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
"""What an item id may be."""
WORKING_ITEM_NAME = re.compile(rf"datasets/{DATASET_ID}/items/{ITEM_ID}")
"""An item of a working state, as lineage's source_item names it."""

_DATASET = rf"(?P<dataset>{DATASET_ID})"
_VERSION = r"(?P<version>[1-9][0-9]{0,17}|latest)"
_ITEM = rf"(?P<item>{ITEM_ID})"
_CATEGORY = r"(?P<category>[1-9][0-9]{0,9})"
_JOB = r"(?P<job>[a-z0-9][a-z0-9-]{0,62})"
_STATE = rf"datasets/{_DATASET}(?:/versions/{_VERSION})?"

_PATTERNS = {
    "dataset": (re.compile(rf"datasets/{_DATASET}"), "datasets/{dataset}"),
    "state": (re.compile(_STATE), "datasets/{dataset} or datasets/{dataset}/versions/{version}"),
    "version": (re.compile(rf"datasets/{_DATASET}/versions/{_VERSION}"), "datasets/{dataset}/versions/{version}"),
    "item": (re.compile(rf"{_STATE}/items/{_ITEM}"), "datasets/{dataset}[/versions/{version}]/items/{item}"),
    "category": (re.compile(rf"{_STATE}/categories/{_CATEGORY}"), "datasets/{dataset}[/versions/{version}]/categories/{category}"),
}


@dataclass(frozen=True)
class StateName:
    """A dataset's working state (``version`` None) or one of its versions (a number or "latest")."""

    dataset_id: str
    version: str | None = None

    @property
    def is_version(self) -> bool:
        return self.version is not None


@dataclass(frozen=True)
class ItemName:
    state: StateName
    item_id: str


@dataclass(frozen=True)
class CategoryName:
    state: StateName
    category_id: int


def _match(kind: str, name: str, field: str) -> re.Match[str]:
    pattern, shape = _PATTERNS[kind]
    match = pattern.fullmatch(name) if len(name) <= MAX_NAME_CHARS else None
    if match is None or ".." in (match.groupdict().get("item") or ""):
        raise invalid_name(name, shape, field)
    return match


def parse_dataset(name: str, field: str = "name") -> str:
    """The dataset id of ``datasets/{dataset}``."""
    return _match("dataset", name, field)["dataset"]


def parse_state(name: str, field: str = "parent") -> StateName:
    match = _match("state", name, field)
    return StateName(match["dataset"], match["version"])


def parse_version(name: str, field: str = "name") -> StateName:
    match = _match("version", name, field)
    return StateName(match["dataset"], match["version"])


def parse_item(name: str, field: str = "name") -> ItemName:
    match = _match("item", name, field)
    return ItemName(StateName(match["dataset"], match["version"]), match["item"])


def parse_category(name: str, field: str = "name") -> CategoryName:
    match = _match("category", name, field)
    category_id = int(match["category"])
    if category_id > 2**31 - 1:
        raise errors.InvalidArgument(
            "INVALID_NAME", f"{field}: category ids run from 1 to 2^31-1", {"field": field, "name": name}
        )
    return CategoryName(StateName(match["dataset"], match["version"]), category_id)


def parse_job(name: str, collection: str, field: str = "name") -> tuple[str, str]:
    """``(dataset_id, job_id)`` of ``datasets/{dataset}/{collection}/{job}`` (collection importJobs or exportJobs)."""
    pattern = re.compile(rf"datasets/{_DATASET}/{collection}/{_JOB}")
    match = pattern.fullmatch(name) if len(name) <= MAX_NAME_CHARS else None
    if match is None:
        raise invalid_name(name, f"datasets/{{dataset}}/{collection}/{{job}}", field)
    return match["dataset"], match["job"]


def dataset_name(dataset_id: str) -> str:
    return f"datasets/{dataset_id}"


def version_name(dataset_id: str, version: int) -> str:
    return f"datasets/{dataset_id}/versions/{version}"


def item_name(dataset_id: str, item_id: str) -> str:
    return f"datasets/{dataset_id}/items/{item_id}"


def category_name(dataset_id: str, category_id: int, version: int = 0) -> str:
    if version:
        return f"datasets/{dataset_id}/versions/{version}/categories/{category_id}"
    return f"datasets/{dataset_id}/categories/{category_id}"
