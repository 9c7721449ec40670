"""A training job's stored spec: what the user asked, validated, with the server defaults filled in.

Plain JSON (the jobs framework stores it as is); every bad value is INVALID_ARGUMENT with a stable
reason and the field's name, before anything is queued.
"""

from __future__ import annotations

import math
import re

from simulacra_services.core import errors
from simulacra_services.core.api.names import VERSION_NUMBER, NamePattern
from simulacra_services.core.registry import check_model_id
from simulacra_services.training.data import DEFAULT_HOLDOUT_FRACTION, DataSpec
from simulacra_services.training.jobs.registration import GATE_CHECKS
from simulacra_services.training.loop.hyperparameters import MODEL_KINDS, InvalidHyperparameter, resolve

KIND = "training"
DATASET_VERSION = NamePattern("datasets/{dataset}/versions/{version}", version=rf"{VERSION_NUMBER}|latest")
DEVICES = ("auto", "cpu", "cuda")
MAX_EVALUATION_SAMPLES = 10_000
_SPLIT = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_ATTRIBUTE_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _invalid(reason: str, field: str, message: str) -> errors.SimulacraError:
    return errors.InvalidArgument(reason, f"{field}: {message}", {"field": field})


def _data(dataset_version: str, data: dict, holdout_fraction: float) -> DataSpec:
    if len(data.get("filter", "")) > 4096:
        raise _invalid("INVALID_FILTER", "training_job.data.filter", "at most 4096 characters")
    for field in ("train_split", "holdout_split"):
        value = data.get(field, "")
        if value and not _SPLIT.fullmatch(value):
            raise _invalid("INVALID_SPLIT", f"training_job.data.{field}", f"{value[:40]!r} is not a split name")
    crops = tuple(data.get("crop_category_ids", ()))
    if len(crops) > 64 or any(not 1 <= c < 2**31 for c in crops):
        raise _invalid("INVALID_CATEGORY", "training_job.data.crop_category_ids", "at most 64 category ids in [1, 2^31)")
    keys = tuple(data.get("attribute_keys", ()))
    if len(keys) > 8 or len(set(keys)) != len(keys) or any(not _ATTRIBUTE_KEY.fullmatch(k) for k in keys):
        raise _invalid("INVALID_ATTRIBUTE_KEY", "training_job.data.attribute_keys", "at most 8 distinct keys of [A-Za-z0-9_.-]{1,64}")
    if data.get("max_examples", 0) < 0:
        raise _invalid("INVALID_ARGUMENT_VALUE", "training_job.data.max_examples", "must be >= 0")
    return DataSpec(
        dataset_version=dataset_version,
        filter=data.get("filter", ""),
        train_split=data.get("train_split") or "train",
        holdout_split=data.get("holdout_split", ""),
        holdout_fraction=holdout_fraction,
        crop_categories=crops,
        attributes=keys,
        max_items=int(data.get("max_examples", 0)),
    )


def build_spec(
    *,
    kind: str,
    dataset_version: str,
    hyperparameters: dict,
    data: dict,
    device: str,
    export: dict,
    display_name: str = "",
) -> dict:
    if kind not in MODEL_KINDS:
        raise _invalid("INVALID_MODEL_KIND", "training_job.model_kind", f"must be one of {', '.join(MODEL_KINDS)}")
    DATASET_VERSION.parse(dataset_version, field="training_job.dataset_version")
    if len(display_name) > 256:
        raise _invalid("INVALID_DISPLAY_NAME", "training_job.display_name", "at most 256 characters")
    try:
        hp = resolve(kind, hyperparameters)
    except InvalidHyperparameter as error:
        raise errors.InvalidArgument("INVALID_HYPERPARAMETER", str(error), {"field": f"hyperparameters.{error.field}"}) from None
    if device not in DEVICES:
        raise _invalid("INVALID_DEVICE", "training_job.device_preference", f"must be one of {', '.join(DEVICES)}")
    model = export.get("model", "")
    if not model:
        raise _invalid("MODEL_REQUIRED", "training_job.export.model", "name the registry model that receives the version")
    check_model_id(model.removeprefix("models/"))
    holdout = export.get("holdout_fraction") or DEFAULT_HOLDOUT_FRACTION
    if not 0 < holdout <= 0.9:
        raise _invalid("INVALID_HOLDOUT_FRACTION", "training_job.export.holdout_fraction", "must be in (0, 0.9]")
    count = export.get("evaluation_sample_count", 0)
    if not 0 <= count <= MAX_EVALUATION_SAMPLES:
        raise _invalid("INVALID_EVALUATION_SAMPLE_COUNT", "training_job.export.evaluation_sample_count", f"must be in [0, {MAX_EVALUATION_SAMPLES}]")
    gate = {k: v for k, v in export.get("quality_gate", {}).items() if v is not None}
    for name, value in gate.items():
        if name not in GATE_CHECKS or not math.isfinite(value) or value < 0:
            raise _invalid("INVALID_QUALITY_GATE", f"training_job.export.quality_gate.{name}", "must be a finite value >= 0")
    return {
        "kind": kind,
        "display_name": display_name,
        "hyperparameters": hp.to_json(),
        "data": _data(dataset_version, data, holdout).to_json(),
        "device": device,
        "export": {"model": model.removeprefix("models/"), "evaluation_sample_count": count,
                   "holdout_fraction": holdout, "quality_gate": gate},
    }
