"""Categories of a dataset: read at any state, create, ensure (imports) and delete from the working state."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row

from simulacra_services.annotation.domain import identifiers
from simulacra_services.annotation.domain.model import Category
from simulacra_services.annotation.domain.records import Page
from simulacra_services.annotation.persistence import rows
from simulacra_services.annotation.persistence.row_codec import category_row
from simulacra_services.annotation.persistence.tables import annotations, items
from simulacra_services.annotation.persistence.tables import categories as categories_table
from simulacra_services.core import errors
from simulacra_services.core.api import pagination
from simulacra_services.core.api.pagination import PageRequest
from simulacra_services.core.db import transaction


class CategoryRepository:
    """The rows of ``categories``; every write takes the dataset's next sequence number."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def list(self, dataset_id: str, version: str | int | None = None) -> list[Category]:
        with self.engine.connect() as conn:
            dataset, seq, _ = rows.state(conn, dataset_id, version)
            return rows.categories_at(conn, dataset.id, seq)

    def list_page(
        self, dataset_id: str, version: str | int | None = None, *, page_size: int = 0, page_token: str = ""
    ) -> Page:
        """Categories by category_id, one page at a time."""
        size = pagination.page_size_of(page_size)
        with self.engine.connect() as conn:
            dataset, seq, number = rows.state(conn, dataset_id, version)
            found = rows.categories_at(conn, dataset.id, seq)
        page = PageRequest.parse(
            size, page_token,
            pagination.fingerprint(rpc="ListCategories", dataset=dataset_id, created=dataset.create_time, version=number),
            validate=pagination.values_of(pagination.is_int),
        )
        if not page.first:
            found = [c for c in found if c.category_id > page.cursor[0]]
        return Page(*page.finish(found, lambda last: [last.category_id]))

    def get(self, dataset_id: str, category_id: int, version: str | int | None = None) -> Category:
        for category in self.list(dataset_id, version):
            if category.category_id == category_id:
                return category
        raise errors.NotFound(
            "CATEGORY_NOT_FOUND",
            f"dataset {dataset_id!r} has no category {category_id}" + (f" in version {version}" if version else ""),
            {"category": f"datasets/{dataset_id}/categories/{category_id}", "category_id": category_id},
        )

    def create(self, dataset_id: str, category: Category) -> Category:
        with transaction(self.engine) as conn:
            dataset = rows.dataset_row(conn, dataset_id, lock=True)
            live = rows.categories_at(conn, dataset.id, None)
            if category.category_id == 0:
                # Above every id ever used: a deleted category's id keeps meaning it in committed versions.
                highest = conn.execute(
                    sa.select(sa.func.max(categories_table.c.category_id)).where(categories_table.c.dataset == dataset.id)
                ).scalar_one()
                category = dataclasses.replace(category, category_id=int(highest or 0) + 1)
            identifiers.validate_category(category, "category")
            for other in live:
                if other.category_id == category.category_id or other.display_name == category.display_name:
                    same_id = other.category_id == category.category_id
                    raise errors.AlreadyExists(
                        "CATEGORY_ALREADY_EXISTS",
                        f"dataset {dataset_id!r} already has a category "
                        + (f"with id {category.category_id}" if same_id else f"named {category.display_name!r}"),
                        {"field": "category.category_id" if same_id else "category.display_name",
                         "category": f"datasets/{dataset_id}/categories/{other.category_id}"},
                    )
            seq = rows.bump(conn, dataset.id)
            conn.execute(categories_table.insert().values(category_row(dataset.id, category, seq)))
            return category

    def ensure(self, dataset_id: str, wanted: Sequence[Category]) -> int:
        """Create the categories of ``wanted`` the dataset lacks (by id); those it has must agree.

        Returns how many were created. For imports: CATEGORY_CONFLICT names
        the first category whose id or name clashes with a different one
        (``identifiers.categories_agree``, the import planner's rule too).
        """
        identifiers.validate_categories(wanted, "categories")
        with transaction(self.engine) as conn:
            dataset = rows.dataset_row(conn, dataset_id, lock=True)
            return len(create_missing(conn, dataset, wanted))

    def delete(self, dataset_id: str, category_id: int) -> None:
        with transaction(self.engine) as conn:
            dataset = rows.dataset_row(conn, dataset_id, lock=True)
            row = conn.execute(
                sa.select(categories_table.c.id).where(
                    categories_table.c.dataset == dataset.id, categories_table.c.category_id == category_id, categories_table.c.removed_seq.is_(None)
                )
            ).first()
            if row is None:
                raise errors.NotFound(
                    "CATEGORY_NOT_FOUND",
                    f"dataset {dataset_id!r} has no category {category_id}",
                    {"category": f"datasets/{dataset_id}/categories/{category_id}", "category_id": category_id},
                )
            in_use = conn.execute(
                sa.select(sa.func.count())
                .select_from(annotations.join(items, annotations.c.item_row == items.c.id))
                .where(annotations.c.dataset == dataset.id, annotations.c.category_id == category_id, items.c.removed_seq.is_(None))
            ).scalar_one()
            if in_use:
                raise errors.FailedPrecondition(
                    "CATEGORY_IN_USE",
                    f"category {category_id} of dataset {dataset_id!r} is used by {in_use} annotations of the working "
                    "state; delete or change those first",
                    {"category": f"datasets/{dataset_id}/categories/{category_id}", "annotation_count": in_use},
                )
            seq = rows.bump(conn, dataset.id)
            conn.execute(sa.update(categories_table).where(categories_table.c.id == row.id).values(removed_seq=seq))


def create_missing(conn: Connection, dataset: Row[Any], wanted: Sequence[Category]) -> list[Category]:
    """Insert the categories of ``wanted`` the working state lacks (one sequence number); those it has must agree."""
    live = {c.category_id: c for c in rows.categories_at(conn, dataset.id, None)}
    names = {c.display_name: c.category_id for c in live.values()}
    missing = []
    for index, category in enumerate(wanted):
        existing = live.get(category.category_id)
        clash = existing is not None and not identifiers.categories_agree(existing, category)
        clash = clash or (existing is None and category.display_name in names)
        if clash:
            raise errors.FailedPrecondition(
                "CATEGORY_CONFLICT",
                f"categories[{index}]: category {category.category_id} {category.display_name!r} differs from "
                "the dataset's category with the same id or name",
                {"field": f"categories[{index}]", "category_id": category.category_id},
            )
        if existing is None:
            missing.append(category)
    if missing:
        seq = rows.bump(conn, dataset.id)
        conn.execute(categories_table.insert(), [category_row(dataset.id, c, seq) for c in missing])
    return missing
