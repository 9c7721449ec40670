"""Protobuf <-> the training domain's plain values (job specs, job records, registry records, reports)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2

from simulacra_client.api.common.v1 import common_pb2
from simulacra_client.api.training.v1 import model_registry_pb2 as registry_pb
from simulacra_client.api.training.v1 import quality_report_pb2 as report_pb
from simulacra_client.api.training.v1 import training_job_pb2 as pb
from simulacra_services.core.api.enums import known_enum
from simulacra_services.core.jobs.model import JobRecord
from simulacra_services.core.registry import ModelRecord, ModelVersionRecord

KINDS = {pb.MODEL_KIND_VAE: "vae", pb.MODEL_KIND_GAN: "gan", pb.MODEL_KIND_ENHANCED_GAN: "enhanced_gan"}
KIND_ENUMS = {name: value for value, name in KINDS.items()} | {"imported": pb.MODEL_KIND_IMPORTED}
DEVICES = {pb.DEVICE_PREFERENCE_UNSPECIFIED: "auto", pb.DEVICE_PREFERENCE_AUTO: "auto", pb.DEVICE_PREFERENCE_CPU: "cpu",
           pb.DEVICE_PREFERENCE_CUDA: "cuda"}
DEVICE_ENUMS = {"auto": pb.DEVICE_PREFERENCE_AUTO, "cpu": pb.DEVICE_PREFERENCE_CPU, "cuda": pb.DEVICE_PREFERENCE_CUDA}
POLICIES = {pb.DIFF_AUGMENT_POLICY_COLOR: "color", pb.DIFF_AUGMENT_POLICY_TRANSLATION: "translation",
            pb.DIFF_AUGMENT_POLICY_CUTOUT: "cutout"}
POLICY_ENUMS = {name: value for value, name in POLICIES.items()}
LOSSES = {pb.GAN_LOSS_HINGE: "hinge", pb.GAN_LOSS_NON_SATURATING: "nonsaturating"}
LOSS_ENUMS = {name: value for value, name in LOSSES.items()}
ADA_HEURISTICS = {pb.ADA_HEURISTIC_R_T: "r_t", pb.ADA_HEURISTIC_R_V: "r_v"}
ADA_HEURISTIC_ENUMS = {name: value for value, name in ADA_HEURISTICS.items()}
STAGES = {name.removeprefix("TRAINING_STAGE_"): value for name, value in pb.TrainingStage.items()}
# proto field -> domain field, where the names differ.
HP_RENAMES = {"discriminator_steps_per_generator_step": "d_steps_per_g_step"}
GATE_FIELDS = ("min_tstr_to_trtr_ratio", "max_frechet_distance", "min_precision", "max_memorization_rate")


def timestamp(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def _iso(value: str) -> timestamp_pb2.Timestamp | None:
    return timestamp(dt.datetime.fromisoformat(value)) if value else None


# ---- requests -> plain values --------------------------------------------------------------
def hyperparameters_in(message: pb.Hyperparameters) -> dict[str, Any]:
    """Only the fields the user set (proto3 ``optional`` presence); defaults are the domain's job."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        if not field.has_presence or not message.HasField(field.name):
            continue
        value = getattr(message, field.name)
        if field.name == "loss":
            known_enum(value, pb.GanLoss, "hyperparameters.loss")
            if value == pb.GAN_LOSS_UNSPECIFIED:
                continue
            value = LOSSES[value]
        elif field.name == "ada_heuristic":
            known_enum(value, pb.AdaHeuristic, "hyperparameters.ada_heuristic")
            if value == pb.ADA_HEURISTIC_UNSPECIFIED:
                continue
            value = ADA_HEURISTICS[value]
        out[HP_RENAMES.get(field.name, field.name)] = value
    if message.diff_augment:
        for value in message.diff_augment:
            known_enum(value, pb.DiffAugmentPolicy, "hyperparameters.diff_augment")
        out["diff_augment"] = tuple(POLICIES.get(v, "unspecified") for v in message.diff_augment)
    return out


def spec_in(job: pb.TrainingJob) -> dict[str, Any]:
    """Keyword arguments of ``jobs.spec.build_spec``."""
    known_enum(job.model_kind, pb.ModelKind, "training_job.model_kind")
    known_enum(job.device_preference, pb.DevicePreference, "training_job.device_preference")
    gate = job.export.quality_gate
    return {
        "kind": KINDS.get(job.model_kind, ""),
        "dataset_version": job.dataset_version,
        "hyperparameters": hyperparameters_in(job.hyperparameters),
        "data": {
            "filter": job.data.filter, "train_split": job.data.train_split, "holdout_split": job.data.holdout_split,
            "crop_category_ids": list(job.data.crop_category_ids), "attribute_keys": list(job.data.attribute_keys),
            "max_examples": job.data.max_examples,
        },
        "device": DEVICES[job.device_preference],
        "export": {
            "model": job.export.model,
            "evaluation_sample_count": job.export.evaluation_sample_count,
            "holdout_fraction": job.export.holdout_fraction,
            "quality_gate": {name: getattr(gate, name) for name in GATE_FIELDS if gate.HasField(name)},
        },
        "display_name": job.display_name,
    }


# ---- plain values -> responses --------------------------------------------------------------
def hyperparameters_out(values: dict[str, Any]) -> pb.Hyperparameters:
    out = pb.Hyperparameters()
    renamed = {domain: proto for proto, domain in HP_RENAMES.items()}
    for name, value in values.items():
        field = renamed.get(name, name)
        if field == "diff_augment":
            out.diff_augment.extend(POLICY_ENUMS[p] for p in value)
        elif field == "loss":
            out.loss = LOSS_ENUMS[value]
        elif field == "ada_heuristic":
            out.ada_heuristic = ADA_HEURISTIC_ENUMS[value]
        elif field in out.DESCRIPTOR.fields_by_name:
            setattr(out, field, value)
    return out


def job_name(job_id: str) -> str:
    return f"trainingJobs/{job_id}"


def training_job(record: JobRecord) -> pb.TrainingJob:
    spec, detail, result = record.spec, dict(record.progress.detail or {}), dict(record.result or {})
    data = spec["data"]
    job = pb.TrainingJob(
        name=job_name(record.job_id),
        display_name=spec.get("display_name", ""),
        dataset_version=data["dataset_version"],
        model_kind=KIND_ENUMS[spec["kind"]],
        hyperparameters=hyperparameters_out(spec["hyperparameters"]),
        device_preference=DEVICE_ENUMS[spec["device"]],
        export=pb.ExportSpec(
            model=f"models/{spec['export']['model']}",
            evaluation_sample_count=spec["export"]["evaluation_sample_count"],
            holdout_fraction=spec["export"]["holdout_fraction"],
            quality_gate=pb.QualityGate(**spec["export"].get("quality_gate", {})),
        ),
        data=pb.TrainingDataSpec(
            filter=data["filter"], train_split=data["train_split"], holdout_split=data["holdout_split"],
            crop_category_ids=data["crop_categories"], attribute_keys=data["attributes"], max_examples=data["max_items"],
        ),
        state=common_pb2.JobState.Value(record.state),
        progress=common_pb2.Progress(done=record.progress.done, total=record.progress.total, message=record.progress.message),
        device=detail.get("device", ""),
        class_names=detail.get("class_names", []),
        category_ids=detail.get("category_ids", []),
        attributes=[pb.AttributeSchema(name=n, values=v) for n, v in detail.get("attributes", [])],
        attempt=record.attempt,
        model_version=result.get("model_version", ""),
        quality_gate_passed=bool(result.get("quality_gate_passed", False)),
        create_time=timestamp(record.create_time),
        start_time=timestamp(record.start_time),
        end_time=timestamp(record.end_time),
    )
    progress = job.training_progress
    progress.stage = STAGES.get(detail.get("stage", ""), pb.TRAINING_STAGE_UNSPECIFIED)
    progress.step = int(detail.get("step", 0))
    progress.total_steps = int(detail.get("total_steps", 0))
    progress.epoch = int(detail.get("epoch", 0))
    progress.losses.update({k: float(v) for k, v in detail.get("losses", {}).items() if isinstance(v, (int, float))})
    progress.samples_per_second = float(detail.get("samples_per_second") or 0.0)
    if detail.get("eta_seconds") is not None and record.state == "JOB_STATE_RUNNING":
        progress.eta.CopyFrom(duration_pb2.Duration(seconds=int(detail["eta_seconds"])))
    progress.latest_checkpoint = detail.get("latest_checkpoint", "")
    progress.preview_object_key = detail.get("preview_object_key", "")
    progress.loss_curve_object_key = detail.get("loss_curve_object_key", "")
    progress.ada_p = float(detail.get("ada_p") or 0.0)
    progress.train_examples = int(detail.get("train_examples", 0))
    progress.holdout_examples = int(detail.get("holdout_examples", 0))
    progress.skipped_items = int(detail.get("skipped_items", 0))
    progress.update_time.CopyFrom(timestamp(record.update_time))
    if record.error is not None:
        job.error.CopyFrom(common_pb2.JobError(code=record.error.code, reason=record.error.reason, message=record.error.message,
                                               metadata=dict(record.error.metadata)))
    return job


def _set_numbers(message, values: dict) -> None:
    for field in message.DESCRIPTOR.fields:
        value = values.get(field.name)
        if value is not None and field.type in (field.TYPE_DOUBLE, field.TYPE_FLOAT, field.TYPE_INT32, field.TYPE_INT64):
            setattr(message, field.name, value)


def quality_report(report: dict) -> report_pb.QualityReport:
    if not report:
        return report_pb.QualityReport()
    out = report_pb.QualityReport(
        feature_extractor=report.get("feature_extractor", ""),
        real_sample_count=report.get("real_sample_count", 0),
        synthetic_sample_count=report.get("synthetic_sample_count", 0),
        seed=report.get("seed", 0),
        holdout_is_train=bool(report.get("holdout_is_train", False)),
        onnx_parity_max_abs_diff=(report.get("export") or {}).get("parity_max_abs_diff") or 0.0,
    )
    _set_numbers(out.fidelity, report.get("fidelity", {}))
    _set_numbers(out.privacy, report.get("privacy", {}))
    if report.get("utility"):
        _set_numbers(out.utility, report["utility"])
        out.utility.classifier = report["utility"].get("classifier", "")
    for entry in report.get("per_class", []):
        item = out.per_class.add(label=entry["label"], class_name=entry.get("class_name", ""),
                                 real_sample_count=entry["real_sample_count"], synthetic_sample_count=entry["synthetic_sample_count"])
        _set_numbers(item.fidelity, entry.get("fidelity", {}))
        _set_numbers(item.privacy, entry.get("privacy", {}))
        item.tstr_recall = entry.get("tstr_recall") or 0.0
        item.label_fidelity = entry.get("label_fidelity") or 0.0
    if report.get("create_time"):
        out.create_time.CopyFrom(_iso(report["create_time"]))
    return out


def model(record: ModelRecord) -> registry_pb.Model:
    return registry_pb.Model(
        name=record.name, description=record.description, aliases=dict(record.aliases), latest_version=record.latest_version,
        tags=dict(record.tags), etag=record.etag, create_time=timestamp(record.create_time), update_time=timestamp(record.update_time),
    )


def model_version(record: ModelVersionRecord, aliases: dict[str, int] | None = None) -> registry_pb.ModelVersion:
    signature = record.signature
    provenance = record.provenance
    hyperparameters = dict(record.hyperparameters)
    hp = pb.Hyperparameters()
    if hyperparameters:
        try:
            hp = hyperparameters_out(hyperparameters)
        except (KeyError, TypeError, ValueError):
            hp = pb.Hyperparameters()  # an imported version's free-form values
    return registry_pb.ModelVersion(
        name=record.name,
        version=record.version,
        onnx_object_key=record.onnx_key,
        onnx_sha256=record.onnx_sha256,
        onnx_size_bytes=record.onnx_size,
        signature=registry_pb.GeneratorSignature(
            latent_dim=signature.latent_dim, channels=signature.channels, height=signature.height, width=signature.width,
            num_classes=signature.num_classes, class_names=signature.class_names, category_ids=signature.category_ids,
            onnx_opset=signature.onnx_opset,
            attributes=[pb.AttributeSchema(name=a.name, values=a.values) for a in signature.attributes],
        ),
        quality_report=quality_report(dict(record.report)),
        model_kind=KIND_ENUMS.get(record.model_kind, pb.MODEL_KIND_UNSPECIFIED),
        training_job=provenance.get("training_job", ""),
        checkpoint=provenance.get("checkpoint", ""),
        dataset_version=provenance.get("dataset_version", ""),
        git_revision=provenance.get("git_revision", ""),
        aliases=sorted(a for a, v in (aliases or {}).items() if v == record.version),
        create_time=timestamp(record.create_time),
        hyperparameters=hp,
        tags=dict(record.tags),
    )
