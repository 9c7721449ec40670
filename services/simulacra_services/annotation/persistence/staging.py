"""Staging areas: items uploaded invisibly, then committed as a version at once, or discarded.

A staging (``UploadItemsRequest.staging_id``) is a row of ``annotation_stagings``;
its id ``n`` gives its items, its staged categories (``UploadItemsRequest.categories``)
and, at commit, a copy of the working state's categories of other ids, the
sequence interval [-n, -n + 1): visible at seq -n only, so in
no working state (``removed_seq`` is set) and in no version until the commit
writes the version row with seq -n (``tables.py``). The version is then read
by every existing path (items, streams, statistics) like any other; the
working state and the dataset's sequence number are never touched.
Uploads, the commit and the discard each run in one transaction under the
dataset's row lock, so a commit sees every acknowledged batch and a discarded
or never committed staging leaves nothing visible.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from simulacra_services.annotation.domain import identifiers, names
from simulacra_services.annotation.domain.model import Category
from simulacra_services.annotation.domain.prepare import PINNED_VERSION_NAME, PreparedItem, check_request_id
from simulacra_services.annotation.domain.records import BatchResult, VersionRecord
from simulacra_services.annotation.persistence.blobs import SHA256_HEX
from simulacra_services.annotation.persistence.item_writes import ItemWriter
from simulacra_services.annotation.persistence.row_codec import (
    annotation_rows, category_of, category_row, encoded_item, item_row, version_of,
)
from simulacra_services.annotation.persistence.rows import MAX_DESCRIPTION, categories_at, content_digest, dataset_row, insert_items
from simulacra_services.annotation.persistence.tables import annotations, datasets, items, request_scope, stagings, versions
from simulacra_services.annotation.persistence.tables import categories as categories_table
from simulacra_services.annotation.persistence.versions import VersionRepository
from simulacra_services.core import errors
from simulacra_services.core.db import idempotency, transaction, utcnow

STAGING_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
MAX_STAGED_CATEGORIES = 10_000  # per request, as a dataset's categories at creation


def _scope(dataset_id: str, staging_id: str) -> str:
    """The idempotency scope of a staging's batches (hashed: scopes hold at most 128 characters)."""
    return request_scope(dataset_id, f"stage:{hashlib.sha256(staging_id.encode()).hexdigest()[:32]}/")


def _not_found(dataset_id: str, staging_id: str) -> errors.SimulacraError:
    return errors.NotFound(
        "STAGING_NOT_FOUND",
        f"dataset {dataset_id!r} has no staging {staging_id!r} (nothing was uploaded with that staging_id, or it was discarded)",
        {"dataset": f"datasets/{dataset_id}", "staging_id": staging_id},
    )


def _committed(dataset_id: str, staging_id: str, version: int) -> errors.SimulacraError:
    return errors.FailedPrecondition(
        "STAGING_COMMITTED",
        f"staging {staging_id!r} of dataset {dataset_id!r} is committed as version {version}: use another staging_id",
        {"dataset": f"datasets/{dataset_id}", "staging_id": staging_id, "version": f"datasets/{dataset_id}/versions/{version}"},
    )


def check_staging_id(staging_id: str, field: str = "staging_id") -> None:
    if not STAGING_ID.fullmatch(staging_id):
        raise errors.InvalidArgument(
            "INVALID_STAGING_ID", f"{field}: 1 to 128 characters of A-Z a-z 0-9 . _ - (a job id, a UUID)", {"field": field}
        )


def check_derived_from(source_version: str, pipeline_digest: str) -> None:
    if source_version and not PINNED_VERSION_NAME.fullmatch(source_version):
        raise errors.InvalidArgument(
            "INVALID_DERIVED_FROM", "derived_from.source_version: must be datasets/{dataset}/versions/{number}",
            {"field": "derived_from.source_version"},
        )
    if pipeline_digest and not SHA256_HEX.fullmatch(pipeline_digest):
        raise errors.InvalidArgument(
            "INVALID_DERIVED_FROM", "derived_from.pipeline_digest: must be a lower-case hex sha256", {"field": "derived_from.pipeline_digest"}
        )
    if pipeline_digest and not source_version:
        raise errors.InvalidArgument(
            "INVALID_DERIVED_FROM", "derived_from.source_version: required with a pipeline_digest", {"field": "derived_from.source_version"}
        )


def check_staged_categories(categories: Sequence[Category]) -> None:
    """The categories of one staged batch: at most ``MAX_STAGED_CATEGORIES``, each valid, ids and names unique."""
    if len(categories) > MAX_STAGED_CATEGORIES:
        raise errors.InvalidArgument(
            "TOO_MANY_CATEGORIES", f"categories: {len(categories)} given, at most {MAX_STAGED_CATEGORIES}",
            {"field": "categories", "limit": MAX_STAGED_CATEGORIES},
        )
    identifiers.validate_categories(categories, "categories")


def _staged_categories(conn: Connection, dataset_pk: int, seq: int) -> dict[int, Category]:
    rows = conn.execute(sa.select(categories_table).where(categories_table.c.dataset == dataset_pk, categories_table.c.added_seq == seq))
    return {int(row.category_id): category_of(row) for row in rows}


def _new_categories(dataset_id: str, wanted: Sequence[Category], live: dict[int, Category], staged: dict[int, Category]) -> list[Category]:
    """The categories of ``wanted`` the staging lacks. Each must agree with the staging's or the working
    state's category of its id (the staging's first), and take no other id's name: CATEGORY_CONFLICT."""
    known = live | staged
    names_to_ids = {c.display_name: c.category_id for c in known.values()}
    new = []
    for index, category in enumerate(wanted):
        existing = known.get(category.category_id)
        if (existing is not None and not identifiers.categories_agree(existing, category)) or (
            names_to_ids.get(category.display_name, category.category_id) != category.category_id
        ):
            raise errors.FailedPrecondition(
                "CATEGORY_CONFLICT",
                f"categories[{index}]: category {category.category_id} {category.display_name!r} differs from dataset "
                f"{dataset_id!r}'s category with the same id or name (in the working state or already staged)",
                {"field": f"categories[{index}]", "category_id": category.category_id},
            )
        if category.category_id not in staged:
            new.append(category)
    return new


class Stagings:
    """Staged uploads, their commit as a version, and their discard, on the store's tables."""

    def __init__(self, writer: ItemWriter, versions: VersionRepository) -> None:
        self.engine = writer.engine
        self.writer = writer
        self.versions = versions

    def _row(self, conn: Connection, dataset: Row[Any], staging_id: str) -> Row[Any] | None:
        return conn.execute(
            sa.select(stagings).where(stagings.c.dataset == dataset.id, stagings.c.staging_id == staging_id)
        ).first()

    def replayed_batch(self, dataset_id: str, staging_id: str, request_id: str, payload_digest: str) -> BatchResult | None:
        """The result of an earlier batch of this staging with ``request_id``, if any (REQUEST_ID_REUSED on a different payload)."""
        if not request_id:
            return None
        check_request_id(request_id)
        with self.engine.connect() as conn:
            dataset_row(conn, dataset_id)
            response = idempotency.recorded_response(conn, _scope(dataset_id, staging_id), request_id, payload_digest)
        return None if response is None else BatchResult(list(response["item_ids"]), True)

    def known_categories(self, dataset_id: str, staging_id: str, wanted: Sequence[Category]) -> list[Category]:
        """The categories a batch of this staging may use besides the working state's: those staged
        before and ``wanted`` (checked: CATEGORY_CONFLICT), for ``ItemWriter.prepare_batch``."""
        with self.engine.connect() as conn:
            dataset = dataset_row(conn, dataset_id)
            staging = self._row(conn, dataset, staging_id)
            staged = {} if staging is None else _staged_categories(conn, dataset.id, -int(staging.id))
            live = {c.category_id: c for c in categories_at(conn, dataset.id, None)}
        _new_categories(dataset_id, wanted, live, staged)
        return [*staged.values(), *wanted]

    def write_batch(
        self,
        dataset_id: str,
        staging_id: str,
        prepared: Sequence[PreparedItem],
        *,
        request_id: str = "",
        payload_digest: str = "",
        categories: Sequence[Category] = (),
    ) -> BatchResult:
        """Insert a batch checked against the working state's and the staging's categories, its blobs
        stored (``ItemWriter.prepare_batch``; check the staging id before, ``check_staging_id``), invisibly.
        ``categories`` (``check_staged_categories``) are staged with it: the version's, never the working state's."""
        check_staging_id(staging_id)
        if request_id:
            check_request_id(request_id)
        scope = _scope(dataset_id, staging_id)
        now = utcnow()
        with transaction(self.engine) as conn:
            dataset = dataset_row(conn, dataset_id, lock=True)
            if request_id:
                response = idempotency.recorded_response(conn, scope, request_id, payload_digest)
                if response is not None:
                    return BatchResult(list(response["item_ids"]), True)
            staging = self._row(conn, dataset, staging_id)
            if staging is None:
                conn.execute(stagings.insert().values(dataset=dataset.id, staging_id=staging_id, version=None, create_time=now))
                staging = self._row(conn, dataset, staging_id)
            if staging.version is not None:
                raise _committed(dataset_id, staging_id, int(staging.version))
            seq = -int(staging.id)
            live = {c.category_id: c for c in categories_at(conn, dataset.id, None)}
            staged = _staged_categories(conn, dataset.id, seq)
            new = _new_categories(dataset_id, categories, live, staged)
            if new:
                conn.execute(categories_table.insert(), [category_row(dataset.id, c, seq) | {"removed_seq": seq + 1} for c in new])
            known = set(live) | set(staged) | {c.category_id for c in new}
            for item in prepared:
                for index, annotation in enumerate(item.annotations):
                    if annotation.category_id and annotation.category_id not in known:
                        field = f"{item.path}.annotations[{index}].category_id"
                        raise errors.InvalidArgument(
                            "UNKNOWN_CATEGORY", f"{field}: category {annotation.category_id} does not exist in the dataset (any more)",
                            {"field": field, "category_id": annotation.category_id},
                        )
            by_id = {item.item_id: item for item in prepared}
            taken = conn.execute(
                sa.select(items.c.item_id).where(items.c.dataset == dataset.id, items.c.added_seq == seq, items.c.item_id.in_(list(by_id)))
            ).scalars().first()
            if taken is not None or len(by_id) < len(prepared):
                item = by_id[taken] if taken is not None else prepared[-1]
                raise errors.AlreadyExists(
                    "ITEM_ALREADY_EXISTS", f"{item.path}.item_id: staging {staging_id!r} already has an item {item.item_id!r}",
                    {"field": f"{item.path}.item_id", "item_index": item.index, "staging_id": staging_id},
                )
            rows = []
            per_item = []
            for item in prepared:
                row = {**item_row(dataset.id, item, seq, now, now), "removed_seq": seq + 1}
                of_item = annotation_rows(dataset.id, 0, item.annotations)
                row["encoded_item"] = encoded_item(dataset_id, row, of_item, self.writer.reader.encoding)
                rows.append(row)
                per_item.append(of_item)
            pks = insert_items(conn, rows)
            new_annotations = [{**a, "item_row": pk} for pk, of_item in zip(pks, per_item) for a in of_item]
            if new_annotations:
                conn.execute(annotations.insert(), new_annotations)
            item_ids = [item.item_id for item in prepared]
            if request_id:
                idempotency.record_response(conn, scope, request_id, payload_digest, {"item_ids": item_ids})
            return BatchResult(item_ids, False)

    def commit(
        self, dataset_id: str, staging_id: str, description: str = "", *, source_version: str = "", pipeline_digest: str = ""
    ) -> tuple[VersionRecord, bool]:
        """The staging's items and categories (and the working state's categories of other ids) as the next version; once only."""
        check_staging_id(staging_id)
        check_derived_from(source_version, pipeline_digest)
        if len(description) > MAX_DESCRIPTION:
            raise errors.InvalidArgument(
                "INVALID_TEXT", f"description: at most {MAX_DESCRIPTION} characters", {"field": "description", "limit": MAX_DESCRIPTION}
            )
        if source_version:
            state = names.parse_version(source_version, "derived_from.source_version")
            self.versions.resolve(state.dataset_id, state.version or "latest")  # VERSION_NOT_FOUND / DATASET_NOT_FOUND
        with transaction(self.engine) as conn:
            dataset = dataset_row(conn, dataset_id, lock=True)
            staging = self._row(conn, dataset, staging_id)
            if staging is None:
                raise _not_found(dataset_id, staging_id)
            if staging.version is not None:
                row = conn.execute(sa.select(versions).where(versions.c.dataset == dataset.id, versions.c.version == staging.version)).one()
                return version_of(dataset_id, row), False
            seq = -int(staging.id)
            staged = sa.select(items.c.id).where(items.c.dataset == dataset.id, items.c.added_seq == seq)
            staged_categories = _staged_categories(conn, dataset.id, seq)
            working = [c for c in categories_at(conn, dataset.id, None) if c.category_id not in staged_categories]
            taken = {c.display_name: c.category_id for c in staged_categories.values()}
            clash = next((c for c in working if c.display_name in taken), None)
            if clash is not None:
                raise errors.FailedPrecondition(
                    "CATEGORY_CONFLICT",
                    f"category {clash.category_id} {clash.display_name!r} of dataset {dataset_id!r} was created after the staging "
                    f"staged category {taken[clash.display_name]} with that name: rename one of them or discard the staging",
                    {"dataset": f"datasets/{dataset_id}", "category_id": clash.category_id, "staging_id": staging_id},
                )
            usable = [*staged_categories, *(c.category_id for c in working)]
            missing = conn.execute(
                sa.select(annotations.c.category_id).where(
                    annotations.c.item_row.in_(staged), annotations.c.category_id != 0, annotations.c.category_id.not_in(usable)
                ).limit(1)
            ).scalar()
            if missing is not None:
                raise errors.FailedPrecondition(
                    "CATEGORY_DELETED",
                    f"category {missing} was deleted from dataset {dataset_id!r} after items using it were staged: "
                    "create it again or discard the staging",
                    {"dataset": f"datasets/{dataset_id}", "category_id": int(missing), "staging_id": staging_id},
                )
            if working:
                conn.execute(categories_table.insert(), [category_row(dataset.id, c, seq) | {"removed_seq": seq + 1} for c in working])
            item_count = conn.execute(sa.select(sa.func.count()).select_from(staged.subquery())).scalar_one()
            annotation_count = conn.execute(
                sa.select(sa.func.count()).select_from(annotations).where(annotations.c.item_row.in_(staged))
            ).scalar_one()
            number = dataset.latest_version + 1
            conn.execute(versions.insert().values(
                dataset=dataset.id, version=number, seq=seq, description=description, create_time=utcnow(),
                item_count=item_count, annotation_count=annotation_count,
                content_sha256=content_digest(conn, dataset.id, seq),
                derived_from_version=source_version, derived_from_pipeline_digest=pipeline_digest if source_version else "",
            ))
            conn.execute(sa.update(datasets).where(datasets.c.id == dataset.id).values(latest_version=number))
            conn.execute(sa.update(stagings).where(stagings.c.id == staging.id).values(version=number))
            row = conn.execute(sa.select(versions).where(versions.c.dataset == dataset.id, versions.c.version == number)).one()
            return version_of(dataset_id, row), True

    def discard(self, dataset_id: str, staging_id: str) -> None:
        """Remove an uncommitted staging and its rows; nothing when it does not exist."""
        check_staging_id(staging_id)
        with transaction(self.engine) as conn:
            dataset = dataset_row(conn, dataset_id, lock=True)
            staging = self._row(conn, dataset, staging_id)
            if staging is None:
                return
            if staging.version is not None:
                raise _committed(dataset_id, staging_id, int(staging.version))
            seq = -int(staging.id)
            staged = sa.select(items.c.id).where(items.c.dataset == dataset.id, items.c.added_seq == seq)
            conn.execute(sa.delete(annotations).where(annotations.c.item_row.in_(staged)))
            conn.execute(sa.delete(items).where(items.c.dataset == dataset.id, items.c.added_seq == seq))
            conn.execute(sa.delete(categories_table).where(categories_table.c.dataset == dataset.id, categories_table.c.added_seq == seq))
            conn.execute(sa.delete(stagings).where(stagings.c.id == staging.id))
            idempotency.forget_scopes(conn, _scope(dataset_id, staging_id))
