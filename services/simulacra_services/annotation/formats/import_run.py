"""Running an import (in a job's worker thread): plan, check every item, then write.

``run_import`` plans the source (``importers.plan_import``), prepares the items in chunks
(image decoding and checks, with progress and cancellation between chunks) and only then writes
them, chunk by chunk, so a bad record anywhere in the input fails the job before the dataset
changes.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from simulacra_services.annotation.domain.model import BoxBoundsPolicy, Category
from simulacra_services.annotation.domain.prepare import PreparedItem, prepare
from simulacra_services.annotation.formats.importers import (
    ImportPlan,
    ImportSource,
    PlannedItem,
    check_categories,
    check_declared_size,
    image_size,
    plan_import,
)
from simulacra_services.core import errors



class JobContext(Protocol):
    """What a running job offers its work: where it writes, progress, and the stop check."""

    job_id: str
    dataset_id: str

    def checkpoint(self, phase: str, chunk: int) -> None:
        """Called between chunks; raises when the job must stop (cancelled, service stopping)."""

    def progress(self, done: int, total: int, message: str, *, force: bool = False) -> None: ...


@dataclass(frozen=True)
class ImportSummary:
    items_created: int
    annotations_created: int
    categories_created: int
    items_skipped: int
    warnings: tuple[str, ...]


def run_import(store: Any, context: JobContext, source: ImportSource, policy: BoxBoundsPolicy, *, chunk_size: int = 256, workers: int = 4) -> ImportSummary:
    """Plan, check every item, then write.

    ``store`` is the ``AnnotationStore``. Checking (decoding images, storing
    them as blobs, validating annotations) is the long part; writing is one
    short transaction per chunk, each with the request id ``{job}-{chunk}``
    (a retried chunk is never written twice; the new categories go with the
    first chunk), so ``store.import_writes`` knows exactly what the job wrote
    and ``store.discard_import`` removes it when the job stops, fails or its
    process dies (the job runner calls it). ``progress.done`` counts each item
    half when checked and half when written, so it reaches ``total`` (the
    item count) only when everything is in the database.
    """
    dataset_id = context.dataset_id
    context.progress(0, 0, "reading and checking the input files", force=True)
    plan = plan_import(source, store.blobs.read, store.live_files(dataset_id), policy)
    existing = store.list_categories(dataset_id)
    missing = check_categories(plan.categories, existing)
    known = {c.category_id: c for c in [*existing, *missing]}
    context.progress(0, len(plan.items), f"checking {len(plan.items)} images", force=True)
    prepared = _prepare_all(store, context, plan.items, known, policy, chunk_size, workers)
    context.checkpoint("checked", 0)
    _write(store, context, plan, prepared, missing, chunk_size)
    return ImportSummary(
        items_created=len(prepared),
        annotations_created=sum(len(p.annotations) for p in prepared),
        categories_created=len(missing),
        items_skipped=plan.skipped,
        warnings=tuple(plan.warnings),
    )


def _prepare_all(
    store: Any, context: JobContext, planned: Sequence[PlannedItem], known: dict[int, Category], policy: BoxBoundsPolicy, chunk_size: int, workers: int
) -> list[PreparedItem]:
    """Prepare every item, ``workers`` chunks at a time, keeping their order.

    Preparing is dominated by storing each image as a blob (a durable write,
    or a round trip to S3) and decoding it, which wait on I/O or release the
    GIL, so a few threads go several times faster. At most two chunks per
    worker are queued ahead, so that a cancel is honoured quickly.
    """
    total = len(planned)
    starts = iter(range(0, total, chunk_size))
    prepared: list[PreparedItem] = []
    pending: collections.deque[concurrent.futures.Future[list[PreparedItem]]] = collections.deque()
    pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix=f"prepare-{context.job_id}")

    def submit_next() -> None:
        start = next(starts, None)
        if start is not None:
            pending.append(pool.submit(_prepare_chunk, store, planned[start : start + chunk_size], known, policy))

    try:
        for _ in range(2 * workers):
            submit_next()
        while pending:
            context.checkpoint("check", len(prepared) // chunk_size)
            prepared.extend(pending.popleft().result())
            submit_next()
            context.progress(len(prepared) // 2, total, f"checked {len(prepared)} of {total} images")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return prepared


def _prepare_chunk(store: Any, chunk: Sequence[PlannedItem], known: dict[int, Category], policy: BoxBoundsPolicy) -> list[PreparedItem]:
    try:
        prepared = prepare(
            [p.item for p in chunk], known, store.blobs, policy=policy, path="item", first_index=0,
            max_image_pixels=store.max_image_pixels, decode_budget=store.decode_budget,
        )
    except errors.SimulacraError as error:
        offset = error.metadata.get("item_index", "")
        if not (offset.isdigit() and int(offset) < len(chunk)):
            raise
        planned = chunk[int(offset)]
        _check_real_size(store, planned)  # an annotation misfitting a wrongly declared size: say that instead
        raise _at_record(error, planned, f"item[{offset}]") from None
    for planned, item in zip(chunk, prepared):
        check_declared_size(planned, item.image.width, item.image.height)
    return prepared


def _check_real_size(store: Any, planned: PlannedItem) -> None:
    if planned.declared_size is None:
        return
    try:
        size = image_size(planned.item.image.data or store.blobs.read(planned.item.image.sha256), planned.path)
    except errors.SimulacraError:
        return  # the image itself is the problem: the original error says so
    check_declared_size(planned, size.width, size.height)


def _at_record(error: errors.SimulacraError, planned: PlannedItem, prefix: str) -> errors.SimulacraError:
    """An error of the prepare step, renamed to the source record (``images[12]``) and its file."""
    message = error.message.replace(prefix, planned.path, 1)
    metadata = dict(error.metadata)
    if metadata.get("field", "").startswith(prefix):
        metadata["field"] = planned.path + metadata["field"][len(prefix) :]
    metadata.pop("item_index", None)
    metadata["record"] = planned.path
    if planned.item.file_name:
        metadata["file_name"] = planned.item.file_name
        message = f"{planned.item.file_name}: {message}"
    return type(error)(error.reason, message, metadata)


def _write(store: Any, context: JobContext, plan: ImportPlan, prepared: list[PreparedItem], missing: list[Category], chunk_size: int) -> None:
    """Items chunk by chunk, the missing categories with the first chunk (or alone when no item is new)."""
    dataset_id, total = context.dataset_id, len(prepared)
    context.progress(total // 2, total, f"writing {total} items", force=True)
    starts = list(range(0, total, chunk_size)) or ([0] if missing else [])
    written = 0
    for number, start in enumerate(starts):
        context.checkpoint("write", number)
        batch = prepared[start : start + chunk_size]
        digest = hashlib.sha256("\n".join(p.content_sha256 for p in batch).encode()).hexdigest()
        result = store.commit_items(
            dataset_id, batch, request_id=f"{context.job_id}-{number}", payload_digest=digest, scope="import",
            categories=plan.categories if number == 0 and missing else (),
        )
        written += len(result.item_ids)
        # Forced: one small update per chunk, so that progress never lags what is in the database.
        context.progress((total + written) // 2, total, f"wrote {written} of {total} items", force=True)
