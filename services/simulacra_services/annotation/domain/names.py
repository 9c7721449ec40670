"""Resource names of the annotation-store (AIP-122), parsed and built.

Every name from a client is parsed here before anything is looked up, so a
malformed one is INVALID_ARGUMENT (reason INVALID_NAME, with the field and
the expected pattern) and never reaches a query or an object key.
"""

from __future__ import annotations

from dataclasses import dataclass

from simulacra_services.core import errors
from simulacra_services.core.errors import shown
from simulacra_services.core.api.names import RESOURCE_ID, VERSION_NUMBER, NamePattern, invalid_name

DATASET_ID = RESOURCE_ID
"""What a dataset id may be: the one rule, used by names, validation and lineage checks."""
ITEM_ID = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
"""What an item id may be."""
VERSION = rf"{VERSION_NUMBER}|latest"
"""A version of a dataset: its number, or ``latest``."""
CATEGORY_ID = r"[1-9][0-9]{0,9}"
JOB_ID = r"[a-z0-9][a-z0-9-]{0,62}"
"""Job ids may start with a digit (they are random hex when the client names none)."""

DATASET = NamePattern("datasets/{dataset}", dataset=DATASET_ID)
STATE = NamePattern("datasets/{dataset}[/versions/{version}]", dataset=DATASET_ID, version=VERSION)
VERSION_NAME = NamePattern("datasets/{dataset}/versions/{version}", dataset=DATASET_ID, version=VERSION)
ITEM = NamePattern("datasets/{dataset}[/versions/{version}]/items/{item}", dataset=DATASET_ID, version=VERSION, item=ITEM_ID)
CATEGORY = NamePattern(
    "datasets/{dataset}[/versions/{version}]/categories/{category}", dataset=DATASET_ID, version=VERSION, category=CATEGORY_ID
)
JOBS = {
    collection: NamePattern(f"datasets/{{dataset}}/{collection}/{{job}}", dataset=DATASET_ID, job=JOB_ID)
    for collection in ("importJobs", "exportJobs")
}
WORKING_ITEM_NAME = NamePattern("datasets/{dataset}/items/{item}", dataset=DATASET_ID, item=ITEM_ID).regex
"""An item of a working state, as lineage's source_item names it."""


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


def _item_parts(name: str, field: str) -> dict[str, str | None]:
    parts = ITEM.parse(name, field)
    if ".." in (parts["item"] or ""):
        raise invalid_name(name, ITEM.template, field)
    return parts


def parse_dataset(name: str, field: str = "name") -> str:
    """The dataset id of ``datasets/{dataset}``."""
    return DATASET.parse(name, field)["dataset"]


def parse_state(name: str, field: str = "parent") -> StateName:
    match = STATE.parse(name, field)
    return StateName(match["dataset"], match["version"])


def parse_version(name: str, field: str = "name") -> StateName:
    match = VERSION_NAME.parse(name, field)
    return StateName(match["dataset"], match["version"])


def parse_item(name: str, field: str = "name") -> ItemName:
    match = _item_parts(name, field)
    return ItemName(StateName(match["dataset"], match["version"]), match["item"])


def parse_category(name: str, field: str = "name") -> CategoryName:
    match = CATEGORY.parse(name, field)
    category_id = int(match["category"])
    if category_id > 2**31 - 1:
        raise errors.InvalidArgument(
            "INVALID_NAME", f"{field}: category ids run from 1 to 2^31-1", {"field": field, "name": shown(name)}
        )
    return CategoryName(StateName(match["dataset"], match["version"]), category_id)


def parse_job(name: str, collection: str, field: str = "name") -> tuple[str, str]:
    """``(dataset_id, job_id)`` of ``datasets/{dataset}/{collection}/{job}`` (collection importJobs or exportJobs)."""
    match = JOBS[collection].parse(name, field)
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
