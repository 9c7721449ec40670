"""The dataset job: read a version from the annotation-store, augment it, commit a derived version.

It reaches the annotation-store through the gateway the service hands it
(``api.annotation_store.AnnotationStoreGateway``: the SDK behind domain types), in a worker thread, and writes in batches
between which it checks for cancellation. Every item goes into the job's
staging area of the target dataset (staging id = the job id), invisible to
everyone, and ``CommitStagedVersion`` turns the staging into the next version
at once, with ``derived_from`` (source version, pipeline digest); the target's
working state is never touched. ``discard`` drops the staging, and the target
dataset when the job created it, so a job that fails or is cancelled leaves no
version and no item behind. When the target is the source's own dataset, the
version holds every item of the source version and the augmented copies.

Resuming: after each staged batch the job saves a checkpoint (source items
done, batches staged, class counts, and the annotation-store stream's cursor
after the last item of that batch); a job taken over after a crash restarts
the stream from that cursor, so no item staged before is read or decoded again.
A batch's request id is ``{staging}-b{batch}``, so a batch staged after the
last checkpoint and sent again is a replay, not a duplicate. The result's
``items_read`` counts the source items the last attempt read, ``items_resumed``
those done before it.

Item seeds: copy ``c`` of source item ``x`` gets ``item_seed(seed, x, c)``
(``x`` the item's resource name), recorded in its lineage with the copy index
and every source (the item and a mixing op's partners, each pinned to the
source version): AugmentBatch with that seed reproduces the item from its
source, bit for bit.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from simulacra_services.annotation.domain.records import Lineage
from simulacra_services.augmentation.engine import Augmenter, Item, parse_spec
from simulacra_services.augmentation.engine import rng as seeds
from simulacra_services.augmentation.jobs.items import NewItem, StoredItem, object_counts
from simulacra_services.augmentation.jobs.planning import histogram, plan_copies, plan_rebalance
from simulacra_services.core.jobs import JobContext, JobRecord

KIND = "augment_dataset"
UPLOAD_BATCH = 32
PARTNER_CACHE = 64
_log = logging.getLogger("simulacra.augmentation.jobs")


def job_name(job_id: str) -> str:
    return f"augmentDatasetJobs/{job_id}"


def dataset_of(version: str) -> str:
    return "/".join(version.split("/")[:2])


def selection_filter(splits: list[str], user_filter: str) -> str:
    by_split = " OR ".join(f'split = "{s}"' for s in splits)
    by_split = f"({by_split})" if len(splits) > 1 else by_split
    return f"({user_filter}) AND {by_split}" if user_filter else by_split


class PartnerSource:
    """The partners of each augmented copy: distinct items of the pool (never the item itself), in an
    order fixed by (seed, item, copy index); read from the version on first use, the last 64 kept."""

    def __init__(self, read: Callable[[str], Any], pool: list[str], count: int, seed: int) -> None:
        self.read, self.pool, self.count, self.seed = read, pool, count, seed
        self._cache: dict[str, Item] = {}

    def for_copy(self, item_name: str, copy_index: int) -> tuple[Item, ...]:
        others = [n for n in self.pool if n != item_name]
        if not self.count or not others:
            return ()
        stream = seeds.op_generator(seeds.item_seed(self.seed, item_name, copy_index), "partners")
        order = stream.permutation(len(others))
        return tuple(self._item(others[i]) for i in order[: self.count])

    def _item(self, name: str) -> Item:
        cached = self._cache.pop(name, None)
        if cached is None:
            stored = self.read(name)
            cached = Item(stored.image, stored.annotations, key=name)
        self._cache[name] = cached
        while len(self._cache) > PARTNER_CACHE:
            self._cache.pop(next(iter(self._cache)))
        return cached


class AugmentDatasetHandler:
    """Runs ``augment_dataset`` jobs against the annotation-store at ``annotation_address``."""

    resumable = True  # a job taken over after a crash (or a stop) goes on from its checkpoint: the batches already staged

    def __init__(self, open_store: Callable[[], Any]) -> None:
        """``open_store``: a new connection to the annotation-store (``api.annotation_store.AnnotationStoreGateway``),
        a context manager with version, categories, object_counts, items, item, prepare_target, upload, commit, discard."""
        self._store = open_store

    async def run(self, job: JobRecord, ctx: JobContext) -> Mapping[str, Any]:
        return await asyncio.to_thread(self._run, job, ctx)

    async def discard(self, job: JobRecord) -> None:
        spec = job.spec
        target = spec.get("target_dataset") or dataset_of(spec.get("source_dataset_version", ""))

        def discard() -> None:
            with self._store() as store:
                store.discard(target, job.job_id, job.job_id)

        await asyncio.to_thread(discard)

    def _run(self, job: JobRecord, ctx: JobContext) -> Mapping[str, Any]:
        spec = job.spec
        source = spec["source_dataset_version"]
        target = spec["target_dataset"] or dataset_of(source)
        name = job_name(job.job_id)
        same_dataset = target == dataset_of(source)
        copy_sources = spec["include_source_items"] or same_dataset
        staging = job.job_id
        with self._store() as store:
            version = store.version(source)
            categories = store.categories(source)
            store.prepare_target(target, categories, job.job_id)
            store.open_staging(target, staging, categories)
            selection = selection_filter(spec["splits"], spec["filter"])
            ctx.progress_sync(0, 0, "planning", force=True)
            counted = store.object_counts(version, selection)
            ctx.check()
            wanted = set(spec.get("partner_category_ids", []))
            pool = [item for item, counts in counted if not wanted or wanted & set(counts)]
            partners = PartnerSource(lambda n: store.item(version, n), pool, spec.get("partners_per_item", 0), spec["seed"])
            before = histogram(c for _, c in counted)
            if spec["mode"] == "rebalance":
                plan, _ = plan_rebalance(counted, spec["max_imbalance_ratio"], spec["category_ids"])
            else:
                plan = plan_copies(counted, spec["copies_per_item"], spec["category_ids"])
            total = sum(plan.values())
            augmenter = Augmenter(parse_spec(spec["pipeline"]), categories)
            # Resuming: the items before ``items_done`` are in the staging already (batches 0..batches-1);
            # the stream restarts after the last of them (``stream``: which selection, ``cursor``: where in it).
            checkpoint = ctx.checkpoint or {}
            done, batches = int(checkpoint.get("items_done", 0)), int(checkpoint.get("batches", 0))
            written = int(checkpoint.get("written", 0))
            if checkpoint:
                after: Counter[int] = Counter({int(k): v for k, v in checkpoint.get("after", {}).items()})
            else:
                after = Counter(before) if copy_sources else Counter()
            first, cursor = int(checkpoint.get("stream", 0)), str(checkpoint.get("cursor", ""))
            skip = done if checkpoint and "cursor" not in checkpoint else 0  # a checkpoint without a cursor (older): skip by count
            selections = [selection, f"NOT ({selection})"] if same_dataset else [selection]
            resumed, read, index = done, 0, done
            batch: list[NewItem] = []
            for stream in range(first, len(selections)):
                for item, position in store.items(version, selections[stream], cursor if stream == first else ""):
                    read += 1
                    if skip:
                        skip -= 1
                        continue
                    index += 1
                    if copy_sources:
                        batch.append(NewItem(item.name.rsplit("/", 1)[1], item.split, item.attributes, item.annotations, item.lineage, image_sha256=item.image_sha256))
                    for copy_index in range(plan.get(item.name, 0)):
                        ctx.check()
                        new = self._augment(augmenter, item, spec, copy_index, version, name, partners)
                        after.update(object_counts(new.annotations))
                        batch.append(new)
                        written += 1
                    if len(batch) >= UPLOAD_BATCH:
                        ctx.check()
                        store.upload(target, batch, staging, batches)
                        batch, batches = [], batches + 1
                        ctx.save_checkpoint_sync({
                            "items_done": index, "batches": batches, "written": written, "after": {str(k): v for k, v in after.items()},
                            "stream": stream, "cursor": position,
                        })
                        ctx.progress_sync(written, total, "augmenting", {"items_written": written, "items_read": read})
            if batch:
                ctx.check()
                store.upload(target, batch, staging, batches)
            ctx.check()
            ctx.progress_sync(written, total, "committing", force=True)
            committed = store.commit(
                target, staging, f"augmented from {version} by {name} (pipeline {spec['pipeline_digest'][:12]}, seed {spec['seed']})",
                version, spec["pipeline_digest"],
            )
        return {
            "output_dataset_version": committed,
            "items_written": written,
            "items_read": read,  # source items this attempt read (and decoded): none twice across attempts
            "items_resumed": resumed,  # source items done by earlier attempts (0: not resumed)
            "class_counts_before": {str(k): v for k, v in sorted(before.items())},
            "class_counts_after": {str(k): v for k, v in sorted(after.items())},
        }

    @staticmethod
    def _augment(
        augmenter: Augmenter, item: StoredItem, spec: Mapping[str, Any], copy_index: int, version: str, name: str, partners: PartnerSource
    ) -> NewItem:
        seed = seeds.item_seed(spec["seed"], item.name, copy_index)
        result = augmenter.run(Item(item.image, item.annotations, key=item.name, partners=partners.for_copy(item.name, copy_index)), seed, item.name)
        attributes = {**item.attributes, "augment_source_version": version, "augment_copy": str(copy_index)}
        sources = tuple((key, version) for key in dict.fromkeys((item.name, *result.partner_keys)))[:64]
        source_id = item.name.rsplit("/", 1)[1]
        return NewItem(
            item_id=f"{source_id[:100]}.aug-{name.rsplit('/', 1)[1][:8]}-{copy_index}",
            split=item.split,
            attributes=attributes,
            annotations=result.annotations,
            lineage=Lineage(
                kind="augmented", source_item=item.name, pipeline_digest=spec["pipeline_digest"], seed=seed,
                sources=sources, copy_index=copy_index,
            ),
            image=result.image,
        )
