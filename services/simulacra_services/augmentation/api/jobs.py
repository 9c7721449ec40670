"""Proto <-> job spec and record, for the dataset jobs (the only protobuf of the job path)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from simulacra_client.api.augmentation.v1 import augmentation_service_pb2 as pb
from simulacra_client.api.common.v1 import common_pb2
from simulacra_services.annotation.api.convert import timestamp
from simulacra_services.augmentation.api import convert
from simulacra_services.augmentation.api.convert import MAX_PARTNERS
from simulacra_services.augmentation.engine import PipelineSpec, canonical, digest
from simulacra_services.augmentation.jobs.planning import MAX_COPIES_PER_ITEM
from simulacra_services.core import errors
from simulacra_services.core.jobs import JobRecord

_VERSION = re.compile(r"datasets/[a-z][a-z0-9-]{0,62}/versions/[1-9][0-9]{0,18}")
_DATASET = re.compile(r"datasets/[a-z][a-z0-9-]{0,62}")
_SPLIT = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_FIELD = "augment_dataset_job"
MAX_FILTER_CHARS = 1024


def _invalid(reason: str, field: str, message: str, **metadata: object) -> errors.SimulacraError:
    return errors.InvalidArgument(reason, f"{field}: {message}", {"field": field, **metadata})


def spec_from_proto(job: pb.AugmentDatasetJob, pipeline: PipelineSpec) -> dict[str, Any]:
    """The job's JSON spec, every field checked (one precise error per bad field)."""
    if not _VERSION.fullmatch(job.source_dataset_version):
        raise _invalid("INVALID_NAME", f"{_FIELD}.source_dataset_version", f"expected datasets/{{dataset}}/versions/{{version}}, got {job.source_dataset_version[:100]!r}")
    if job.target_dataset and not _DATASET.fullmatch(job.target_dataset):
        raise _invalid("INVALID_NAME", f"{_FIELD}.target_dataset", f"expected datasets/{{dataset}}, got {job.target_dataset[:100]!r}")
    mode = "rebalance" if job.mode == pb.AUGMENT_MODE_REBALANCE else "copies"
    if job.mode not in pb.AugmentMode.values():
        raise _invalid("PARAM_OUT_OF_RANGE", f"{_FIELD}.mode", f"unknown mode {job.mode}")
    copies = job.copies_per_item or 1
    if not 1 <= copies <= MAX_COPIES_PER_ITEM:
        raise _invalid("PARAM_OUT_OF_RANGE", f"{_FIELD}.copies_per_item", f"must lie in [1, {MAX_COPIES_PER_ITEM}], got {copies}", value=copies)
    ratio = job.max_imbalance_ratio or 2.0
    if not (math.isfinite(ratio) and ratio > 1.0):
        raise _invalid("PARAM_OUT_OF_RANGE", f"{_FIELD}.max_imbalance_ratio", f"must be > 1, got {ratio}", value=ratio)
    splits = list(job.splits) or ["train"]
    for index, split in enumerate(splits):
        if not _SPLIT.fullmatch(split):
            raise _invalid("INVALID_SPLIT", f"{_FIELD}.splits[{index}]", f"{split[:40]!r} is not a split name")
    if len(job.filter) > MAX_FILTER_CHARS:
        raise _invalid("PARAM_OUT_OF_RANGE", f"{_FIELD}.filter", f"at most {MAX_FILTER_CHARS} characters", limit=MAX_FILTER_CHARS)
    for index, category_id in enumerate(job.category_ids):
        if category_id < 1:
            raise _invalid("PARAM_OUT_OF_RANGE", f"{_FIELD}.category_ids[{index}]", f"category ids are >= 1, got {category_id}")
    if not 0 <= job.partners_per_item <= MAX_PARTNERS:
        raise _invalid("PARAM_OUT_OF_RANGE", f"{_FIELD}.partners_per_item", f"must lie in [0, {MAX_PARTNERS}], got {job.partners_per_item}", value=job.partners_per_item)
    for index, category_id in enumerate(job.partner_category_ids):
        if category_id < 1:
            raise _invalid("PARAM_OUT_OF_RANGE", f"{_FIELD}.partner_category_ids[{index}]", f"category ids are >= 1, got {category_id}")
    source = job.pipeline.WhichOneof("source")
    return {
        "source_dataset_version": job.source_dataset_version,
        "target_dataset": job.target_dataset,
        "pipeline_name": job.pipeline.pipeline_name if source == "pipeline_name" else "",
        "pipeline": canonical(pipeline),
        "pipeline_digest": digest(pipeline),
        "copies_per_item": copies,
        "seed": int(job.seed),
        "category_ids": [int(c) for c in job.category_ids],
        "include_source_items": bool(job.include_source_items),
        "splits": splits,
        "filter": job.filter,
        "mode": mode,
        "max_imbalance_ratio": float(ratio),
        "partners_per_item": int(job.partners_per_item),
        "partner_category_ids": [int(c) for c in job.partner_category_ids],
    }


def _counts(values: Mapping[str, int] | None) -> dict[int, int]:
    return {int(k): int(v) for k, v in (values or {}).items()}


def job_to_proto(record: JobRecord) -> pb.AugmentDatasetJob:
    spec, result = record.spec, record.result or {}
    resolved = convert.spec_to_proto_json(spec["pipeline"])
    source = pb.PipelineSource(pipeline_name=spec["pipeline_name"]) if spec["pipeline_name"] else pb.PipelineSource(pipeline_spec=resolved)
    message = pb.AugmentDatasetJob(
        name=f"augmentDatasetJobs/{record.job_id}",
        source_dataset_version=spec["source_dataset_version"],
        pipeline=source,
        resolved_pipeline=resolved,
        pipeline_digest=spec["pipeline_digest"],
        copies_per_item=spec["copies_per_item"],
        seed=spec["seed"],
        category_ids=spec["category_ids"],
        include_source_items=spec["include_source_items"],
        target_dataset=spec["target_dataset"],
        output_dataset_version=result.get("output_dataset_version", ""),
        state=common_pb2.JobState.Value(record.state),
        progress=common_pb2.Progress(
            done=record.progress.done, total=record.progress.total, message=record.progress.message, update_time=timestamp(record.update_time)
        ),
        create_time=timestamp(record.create_time),
        splits=spec["splits"],
        filter=spec["filter"],
        mode=pb.AUGMENT_MODE_REBALANCE if spec["mode"] == "rebalance" else pb.AUGMENT_MODE_COPIES,
        max_imbalance_ratio=spec["max_imbalance_ratio"],
        class_counts_before=_counts(result.get("class_counts_before")),
        class_counts_after=_counts(result.get("class_counts_after")),
        items_written=int(result.get("items_written", 0)),
        partners_per_item=int(spec.get("partners_per_item", 0)),
        partner_category_ids=list(spec.get("partner_category_ids", [])),
    )
    if record.start_time is not None:
        message.start_time.CopyFrom(timestamp(record.start_time))
    if record.end_time is not None:
        message.end_time.CopyFrom(timestamp(record.end_time))
    if record.error is not None:
        message.error.CopyFrom(common_pb2.JobError(code=record.error.code, reason=record.error.reason, message=record.error.message, metadata=dict(record.error.metadata)))
    return message
