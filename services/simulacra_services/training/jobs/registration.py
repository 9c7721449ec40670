"""From a finished worker's result to a model version: quality gate, signature, provenance."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

from simulacra_services.core.registry import AttributeSpec, GeneratorSignature, ModelRegistry, ModelVersionRecord
from simulacra_services.core.storage import ObjectStore

GATE_CHECKS = {
    "min_tstr_to_trtr_ratio": lambda report, limit: _tstr_ratio(report) >= limit,
    "max_frechet_distance": lambda report, limit: report["fidelity"]["frechet_distance"] <= limit,
    "min_precision": lambda report, limit: report["fidelity"]["precision"] >= limit,
    "max_memorization_rate": lambda report, limit: report["privacy"]["memorization_rate"] <= limit,
}


def _tstr_ratio(report: dict) -> float:
    utility = report.get("utility")
    if not utility or not utility.get("trtr_accuracy"):
        return float("nan")  # no labels: a TSTR gate cannot pass
    return utility["tstr_accuracy"] / utility["trtr_accuracy"]


def gate_failures(report: dict, gate: dict) -> list[str]:
    """Names of the gate's conditions the report does not meet (NaN never meets one)."""
    return [name for name, limit in sorted(gate.items()) if limit is not None and not GATE_CHECKS[name](report, limit)]


def json_safe(value):
    """NaN and infinities as null: reports travel as strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5, check=False
        )
    except OSError:
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def signature_of(model_config: dict, data: dict, opset: int) -> GeneratorSignature:
    return GeneratorSignature(
        latent_dim=model_config["latent_dim"],
        channels=model_config["channels"],
        height=model_config["height"],
        width=model_config["width"],
        num_classes=model_config["num_classes"],
        class_names=tuple(data.get("class_names", ())),
        category_ids=tuple(data.get("category_ids", ())),
        attributes=tuple(AttributeSpec(name, tuple(values)) for name, values in data.get("attributes", ())),
        onnx_opset=opset,
    )


def register_result(
    registry: ModelRegistry,
    objects: ObjectStore,
    *,
    job_id: str,
    spec: dict,
    data: dict,
    result: dict,
) -> ModelVersionRecord:
    report = json_safe(json.loads(objects.get(result["report_key"])))
    signature = signature_of(result["model_config"], data, report.get("export", {}).get("onnx_opset", 17))
    return registry.register_version(
        spec["export"]["model"],
        objects.get(result["onnx_key"]),
        signature,
        model_kind=spec["kind"],
        report=report,
        report_png=objects.get(result["report_png_key"]),
        provenance={
            "training_job": f"trainingJobs/{job_id}",
            "checkpoint": result["checkpoint"],
            "dataset_version": spec["data"]["dataset_version"],
            "git_revision": git_revision(),
        },
        hyperparameters=spec["hyperparameters"],
    )
