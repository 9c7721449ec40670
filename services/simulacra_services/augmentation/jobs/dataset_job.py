"""The dataset job: read a version from the annotation-store, augment it, commit a derived version.

It talks to the annotation-store over gRPC with the SDK (``AnnotationClient``),
in a worker thread, and writes in batches between which it checks for
cancellation. The derived version is committed last; until then the job's
items carry the attribute ``augment_job`` (its name), and ``discard`` deletes
them again, or the whole target dataset when the job created it, so a job that
fails or is cancelled leaves no version and no items behind.

Item seeds: copy ``c`` of source item ``x`` gets ``item_seed(seed, x, c)``
(``x`` the item's resource name), recorded in its lineage: AugmentBatch with
that seed reproduces the item from its source, bit for bit.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import cv2
import grpc
import numpy as np

from simulacra_client.annotation import AnnotationClient
from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.annotation.v1 import annotation_service_pb2 as rpc
from simulacra_client.api.common.v1 import common_pb2
from simulacra_client.errors import NotFoundError, SimulacraRpcError
from simulacra_services.annotation.convert import annotation_from_proto, annotation_to_proto, category_from_proto
from simulacra_services.augmentation.engine import Augmenter, Item, parse_spec
from simulacra_services.augmentation.engine import rng as seeds
from simulacra_services.augmentation.jobs.planning import histogram, plan_copies, plan_rebalance
from simulacra_services.core import errors
from simulacra_services.core.jobs import JobContext, JobRecord

KIND = "augment_dataset"
UPLOAD_BATCH = 32
_log = logging.getLogger("simulacra.augmentation.jobs")
_ERRORS = {cls.code.value: cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.SimulacraError) and cls is not errors.SimulacraError}


def domain_error(error: SimulacraRpcError, what: str) -> errors.SimulacraError:
    """An annotation-store error as this job's error: same code and reason, and what the job was doing."""
    cls = _ERRORS.get(error.code.name, errors.Unavailable)
    reason = error.reason or ("ANNOTATION_STORE_UNAVAILABLE" if error.code is grpc.StatusCode.UNAVAILABLE else "ANNOTATION_STORE_ERROR")
    return cls(reason, f"{what}: {error.message}", {**error.metadata, "annotation_store_code": error.code.name})


def job_name(job_id: str) -> str:
    return f"augmentDatasetJobs/{job_id}"


def dataset_of(version: str) -> str:
    return "/".join(version.split("/")[:2])


def selection_filter(splits: list[str], user_filter: str) -> str:
    by_split = " OR ".join(f'split = "{s}"' for s in splits)
    by_split = f"({by_split})" if len(splits) > 1 else by_split
    return f"({user_filter}) AND {by_split}" if user_filter else by_split


def decode_image(data: bytes, field: str) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise errors.DataLoss("UNDECODABLE_IMAGE", f"{field}: the stored image does not decode", {"field": field})
    if image.ndim == 2:
        return image[:, :, None]
    if image.dtype != np.uint8:
        image = (image / 257).astype(np.uint8)
    code = cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB
    return cv2.cvtColor(image, code)


def encode_png(image: np.ndarray) -> bytes:
    if image.dtype != np.uint8:
        raise errors.InvalidArgument("FLOAT_OUTPUT_NOT_STORABLE", "pipeline: a NormalizeOp makes float images; stored items need uint8 (leave normalize to the stream)")
    if image.shape[2] == 1:
        pixels = image[:, :, 0]
    else:
        pixels = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA if image.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", pixels)
    assert ok
    return encoded.tobytes()


def object_counts(item: pb.Item) -> Counter[int]:
    """Objects per category: annotations that share an instance_id are one object (as the store's class balance)."""
    counts: Counter[int] = Counter()
    seen: set[tuple[int, str]] = set()
    for a in item.annotations:
        if a.category_id <= 0 or a.WhichOneof("kind") == "pixel_map":
            continue
        if a.instance_id:
            if (a.category_id, a.instance_id) in seen:
                continue
            seen.add((a.category_id, a.instance_id))
        counts[int(a.category_id)] += 1
    return counts


def to_engine(item: pb.Item) -> tuple[np.ndarray, tuple]:
    image = decode_image(item.image.data, f"{item.name}.image")
    annotations = tuple(annotation_from_proto(a, f"{item.name}.annotations[{i}]") for i, a in enumerate(item.annotations))
    return image, annotations


class PartnerSource:
    """The partners of each augmented copy: distinct items of the pool (never the item itself), in an
    order fixed by (seed, item, copy index); read from the version on first use, the last 64 kept."""

    CACHE = 64

    def __init__(self, client: AnnotationClient, version: str, pool: list[str], count: int, seed: int) -> None:
        self.client, self.version, self.pool, self.count, self.seed = client, version, pool, count, seed
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
            request = rpc.GetItemRequest(name=f"{self.version}/items/{name.rsplit('/', 1)[1]}", view=pb.ITEM_VIEW_FULL)
            try:
                message = self.client.stub.GetItem(request, timeout=120).item
            except grpc.RpcError as error:
                from simulacra_client.errors import from_rpc_error

                raise domain_error(from_rpc_error(error), f"reading partner {name}") from None
            image, annotations = to_engine(message)
            cached = Item(image, annotations, key=name)
        self._cache[name] = cached
        while len(self._cache) > self.CACHE:
            self._cache.pop(next(iter(self._cache)))
        return cached


class AugmentDatasetHandler:
    """Runs ``augment_dataset`` jobs against the annotation-store at ``annotation_address``."""

    resumable = False  # a job taken over after a crash fails (INTERRUPTED) and discards what it wrote

    def __init__(self, annotation_address: str, *, timeout: float = 120.0) -> None:
        self.annotation_address = annotation_address
        self.timeout = timeout

    def _client(self) -> AnnotationClient:
        return AnnotationClient(self.annotation_address, timeout=self.timeout)

    async def run(self, job: JobRecord, ctx: JobContext) -> Mapping[str, Any]:
        return await asyncio.to_thread(self._run, job, ctx)

    async def discard(self, job: JobRecord) -> None:
        await asyncio.to_thread(self._discard, job)

    # -- the work -------------------------------------------------------------------

    def _run(self, job: JobRecord, ctx: JobContext) -> Mapping[str, Any]:
        spec = job.spec
        source = spec["source_dataset_version"]
        target = spec["target_dataset"] or dataset_of(source)
        name = job_name(job.job_id)
        with self._client() as client:
            try:
                version = client.get_version(source)
            except SimulacraRpcError as error:
                raise domain_error(error, f"reading {source}") from None
            categories = self._call(client.list_categories, f"reading the categories of {source}", source)
            self._prepare_target(client, target, categories, name)
            selection = selection_filter(spec["splits"], spec["filter"])
            ctx.progress_sync(0, 0, "planning", force=True)
            counted = [
                (s.item.name, object_counts(s.item))
                for s in self._call(lambda: list(client.stream_items(version.name, filter=selection, view=pb.ITEM_VIEW_BASIC)), f"listing {source}")
            ]
            wanted = set(spec.get("partner_category_ids", []))
            pool = [name for name, counts in counted if not wanted or wanted & set(counts)]
            partners = PartnerSource(client, version.name, pool, spec.get("partners_per_item", 0), spec["seed"])
            ctx.check()
            before = histogram(c for _, c in counted)
            if spec["mode"] == "rebalance":
                plan, _ = plan_rebalance(counted, spec["max_imbalance_ratio"], spec["category_ids"])
            else:
                plan = plan_copies(counted, spec["copies_per_item"], spec["category_ids"])
            total = sum(plan.values())
            augmenter = Augmenter(parse_spec(spec["pipeline"]), {c.category_id: category_from_proto(c) for c in categories})
            after: Counter[int] = Counter(before) if (spec["include_source_items"] or target == dataset_of(source)) else Counter()
            written = 0
            batch: list[tuple[str, pb.Item]] = []
            for streamed in self._call(lambda: client.stream_items(version.name, filter=selection, view=pb.ITEM_VIEW_FULL), f"reading {source}"):
                item = streamed.item
                copies = plan.get(item.name, 0)
                if spec["include_source_items"] and target != dataset_of(source):
                    batch.append((item.name.rsplit("/", 1)[1], self._source_copy(item)))
                for copy_index in range(copies):
                    ctx.check()
                    output = self._augment(augmenter, item, spec, copy_index, version.name, name, partners)
                    after.update(object_counts(output[1]))
                    batch.append(output)
                    written += 1
                if len(batch) >= UPLOAD_BATCH:
                    self._upload(client, target, batch, ctx)
                    batch = []
                    ctx.progress_sync(written, total, "augmenting", {"items_written": written})
            if batch:
                self._upload(client, target, batch, ctx)
            ctx.check()
            ctx.progress_sync(written, total, "committing", force=True)
            description = f"augmented from {source} by {name} (pipeline {spec['pipeline_digest'][:12]}, seed {spec['seed']})"
            committed = self._call(lambda: client.commit(target, description=description[:4096]), f"committing {target}")
        return {
            "output_dataset_version": committed.version.name,
            "items_written": written,
            "class_counts_before": {str(k): v for k, v in sorted(before.items())},
            "class_counts_after": {str(k): v for k, v in sorted(after.items())},
        }

    @staticmethod
    def _call(function: Any, what: str, *args: Any) -> Any:
        try:
            return function(*args)
        except SimulacraRpcError as error:
            raise domain_error(error, what) from None

    def _prepare_target(self, client: AnnotationClient, target: str, categories: list[pb.Category], name: str) -> None:
        """Create the target dataset (labelled with the job) with the source's categories, or add the missing ones."""
        try:
            client.get_dataset(target)
        except NotFoundError:
            clean = [pb.Category(category_id=c.category_id, display_name=c.display_name, supercategory=c.supercategory,
                                 keypoint_names=c.keypoint_names, skeleton=c.skeleton, flip_pairs=c.flip_pairs) for c in categories]
            self._call(lambda: client.create_dataset(target, labels={"augment_job": name.rsplit("/", 1)[1]}, categories=clean), f"creating {target}")
            return
        except SimulacraRpcError as error:
            raise domain_error(error, f"reading {target}") from None
        present = {c.category_id for c in self._call(client.list_categories, f"reading the categories of {target}", target)}
        for category in categories:
            if category.category_id not in present:
                clean = pb.Category(category_id=category.category_id, display_name=category.display_name, supercategory=category.supercategory,
                                    keypoint_names=category.keypoint_names, skeleton=category.skeleton, flip_pairs=category.flip_pairs)
                self._call(lambda c=clean: client.create_category(target, c), f"adding category {category.category_id} to {target}")

    @staticmethod
    def _source_copy(item: pb.Item) -> pb.Item:
        copy = pb.Item()
        copy.CopyFrom(item)
        for field in ("name", "create_time", "update_time", "etag", "version"):
            copy.ClearField(field)
        copy.image.ClearField("sha256")
        for field in ("width", "height", "format", "channels", "size_bytes"):
            copy.image.ClearField(field)
        return copy

    @staticmethod
    def _augment(
        augmenter: Augmenter, item: pb.Item, spec: Mapping[str, Any], copy_index: int, version: str, name: str, partners: PartnerSource
    ) -> tuple[str, pb.Item]:
        seed = seeds.item_seed(spec["seed"], item.name, copy_index)
        result = augmenter.run(Item(*to_engine(item), key=item.name, partners=partners.for_copy(item.name, copy_index)), seed, item.name)
        out = pb.Item(split=item.split, image=pb.Image(data=encode_png(result.image)), file_name="")
        out.attributes.update(item.attributes)
        out.attributes.update({"augment_source_version": version, "augment_copy": str(copy_index), "augment_job": name})
        if result.partner_keys:
            out.attributes["augment_partners"] = ",".join(dict.fromkeys(result.partner_keys))[:1024]
        out.lineage.augmented.CopyFrom(common_pb2.AugmentedSource(source_item=item.name, pipeline_digest=spec["pipeline_digest"], seed=seed))
        for annotation in result.annotations:
            annotation_to_proto(annotation, out.annotations.add())
        source_id = item.name.rsplit("/", 1)[1]
        job_part = name.rsplit("/", 1)[1][:8]
        return f"{source_id[:100]}.aug-{job_part}-{copy_index}", out

    def _upload(self, client: AnnotationClient, target: str, batch: list[tuple[str, pb.Item]], ctx: JobContext) -> None:
        ctx.check()
        self._call(lambda: client.upload_items(target, batch, batch_size=len(batch), box_bounds_policy=pb.BOX_BOUNDS_POLICY_CLIP), f"uploading to {target}")

    def _discard(self, job: JobRecord) -> None:
        spec = job.spec
        target = spec.get("target_dataset") or dataset_of(spec.get("source_dataset_version", ""))
        name = job_name(job.job_id)
        with self._client() as client:
            try:
                dataset = client.get_dataset(target)
            except SimulacraRpcError:
                return
            if dataset.labels.get("augment_job") == job.job_id:
                try:
                    client.delete_dataset(target, force=True)
                    return
                except SimulacraRpcError:
                    _log.exception("job %s: deleting the dataset it created failed", job.job_id)
            try:
                stale = list(client.list_items(target, filter=f'attributes.augment_job = "{name}"'))
                for item in stale:
                    client.stub.DeleteItem(rpc.DeleteItemRequest(name=item.name), timeout=self.timeout)
            except (SimulacraRpcError, grpc.RpcError):
                _log.exception("job %s: deleting the items it wrote failed", job.job_id)


