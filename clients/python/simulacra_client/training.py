"""The friendly client of the generator-training service: training jobs and the model registry.

    from simulacra_client import TrainingClient

    with TrainingClient("127.0.0.1:50053") as client:
        job = client.create_job("mnist@1", "enhanced_gan", model="mnist-gan",
                                hyperparameters={"max_steps": 2000, "batch_size": 64})
        job = client.wait_job(job.name, progress=lambda j: print(j.training_progress.step))
        version = client.get_version(job.model_version)          # models/mnist-gan/versions/1
        png = client.preview(job.name, "samples")                 # the latest sample grid
        client.set_alias("mnist-gan", "production", version.version)

Only grpcio, protobuf and numpy are needed (no torch).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from simulacra_client.annotation import version_name
from simulacra_client.api.common.v1 import common_pb2
from simulacra_client.api.training.v1 import model_registry_pb2 as registry_pb
from simulacra_client.api.training.v1 import model_registry_service_pb2 as registry_rpc
from simulacra_client.api.training.v1 import model_registry_service_pb2_grpc as registry_grpc
from simulacra_client.api.training.v1 import training_job_pb2 as pb
from simulacra_client.api.training.v1 import training_service_pb2 as rpc
from simulacra_client.api.training.v1 import training_service_pb2_grpc as rpc_grpc
from simulacra_client.errors import SimulacraRpcError
from simulacra_client.raw import RawClient, ServiceClient

__all__ = ["TrainingClient", "job_name", "model_name", "model_version_name", "KINDS", "TERMINAL_STATES"]

KINDS = {"vae": pb.MODEL_KIND_VAE, "cvae": pb.MODEL_KIND_VAE, "gan": pb.MODEL_KIND_GAN, "cgan": pb.MODEL_KIND_GAN,
         "enhanced_gan": pb.MODEL_KIND_ENHANCED_GAN, "enhanced-gan": pb.MODEL_KIND_ENHANCED_GAN}
DEVICES = {"auto": pb.DEVICE_PREFERENCE_AUTO, "cpu": pb.DEVICE_PREFERENCE_CPU, "cuda": pb.DEVICE_PREFERENCE_CUDA}
PREVIEWS = {"samples": rpc.PREVIEW_KIND_SAMPLES, "loss_curve": rpc.PREVIEW_KIND_LOSS_CURVE, "loss-curve": rpc.PREVIEW_KIND_LOSS_CURVE,
            "report": rpc.PREVIEW_KIND_REPORT}
FILES = {"onnx": registry_rpc.MODEL_VERSION_FILE_ONNX, "report_png": registry_rpc.MODEL_VERSION_FILE_REPORT_PNG,
         "report-png": registry_rpc.MODEL_VERSION_FILE_REPORT_PNG}
LOSSES = {"hinge": pb.GAN_LOSS_HINGE, "nonsaturating": pb.GAN_LOSS_NON_SATURATING, "non_saturating": pb.GAN_LOSS_NON_SATURATING}
ADA_HEURISTICS = {"r_t": pb.ADA_HEURISTIC_R_T, "r_v": pb.ADA_HEURISTIC_R_V}
POLICIES = {"color": pb.DIFF_AUGMENT_POLICY_COLOR, "translation": pb.DIFF_AUGMENT_POLICY_TRANSLATION, "cutout": pb.DIFF_AUGMENT_POLICY_CUTOUT}
TERMINAL_STATES = frozenset({common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED})


def job_name(job: str) -> str:
    """``abc123`` or ``trainingJobs/abc123`` -> ``trainingJobs/abc123``."""
    return job if job.startswith("trainingJobs/") else f"trainingJobs/{job}"


def model_name(model: str) -> str:
    return model if model.startswith("models/") else f"models/{model}"


def model_version_name(reference: str) -> str:
    """``MODEL@VERSION`` / ``MODEL@ALIAS`` / ``MODEL`` (latest) / ``models/m/versions/v`` -> the version's name."""
    if reference.startswith("models/") and "/versions/" in reference:
        return reference
    model, _, ref = reference.removeprefix("models/").partition("@")
    return f"models/{model}/versions/{ref or 'latest'}"


def to_hyperparameters(values: Mapping[str, Any] | pb.Hyperparameters | None) -> pb.Hyperparameters:
    """A dict with the proto field names; ``loss``, ``ada_heuristic`` and ``diff_augment`` may be given by name."""
    if values is None:
        return pb.Hyperparameters()
    if isinstance(values, pb.Hyperparameters):
        return values
    fields = dict(values)
    if isinstance(fields.get("loss"), str):
        fields["loss"] = LOSSES[fields["loss"]]
    if isinstance(fields.get("ada_heuristic"), str):
        fields["ada_heuristic"] = ADA_HEURISTICS[fields["ada_heuristic"]]
    if "diff_augment" in fields:
        fields["diff_augment"] = [POLICIES[p] if isinstance(p, str) else p for p in fields["diff_augment"]]
    return pb.Hyperparameters(**fields)


class TrainingClient(ServiceClient):
    """A connection to the generator-training service. Use as a context manager, or call ``close()``.

    One channel serves both of the service's contracts: ``TrainingService`` (``self._raw``) and
    ``ModelRegistryService`` (``self._registry``).
    """

    RAW = RawClient
    STUB = rpc_grpc.TrainingServiceStub
    SERVICES = [rpc, registry_rpc]

    def __init__(self, address: str, **connection: Any) -> None:
        super().__init__(address, **connection)
        self._registry = RawClient(self._raw.channel, registry_grpc.ModelRegistryServiceStub, timeout=self.timeout)
        self.registry_stub = self._registry.stub

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> TrainingClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- jobs ------------------------------------------------------------------------------------
    def create_job(
        self,
        dataset_version: str,
        kind: str | int,
        *,
        model: str,
        hyperparameters: Mapping[str, Any] | pb.Hyperparameters | None = None,
        device: str = "auto",
        display_name: str = "",
        filter: str = "",
        train_split: str = "",
        holdout_split: str = "",
        crop_category_ids: Sequence[int] = (),
        attribute_keys: Sequence[str] = (),
        max_examples: int = 0,
        evaluation_sample_count: int = 0,
        holdout_fraction: float = 0.0,
        quality_gate: Mapping[str, float] | None = None,
        request_id: str = "",
    ) -> pb.TrainingJob:
        """Queue a job on ``NAME@VERSION``; ``kind``: vae | gan | enhanced_gan (or the enum)."""
        job = pb.TrainingJob(
            display_name=display_name,
            dataset_version=version_name(dataset_version),
            model_kind=KINDS[kind] if isinstance(kind, str) else kind,
            hyperparameters=to_hyperparameters(hyperparameters),
            device_preference=DEVICES[device],
            export=pb.ExportSpec(model=model_name(model), evaluation_sample_count=evaluation_sample_count,
                                 holdout_fraction=holdout_fraction, quality_gate=pb.QualityGate(**dict(quality_gate or {}))),
            data=pb.TrainingDataSpec(filter=filter, train_split=train_split, holdout_split=holdout_split,
                                     crop_category_ids=list(crop_category_ids), attribute_keys=list(attribute_keys),
                                     max_examples=max_examples),
        )
        request = rpc.CreateTrainingJobRequest(training_job=job, request_id=request_id)
        return self._raw.call("CreateTrainingJob", request).training_job

    def get_job(self, job: str) -> pb.TrainingJob:
        return self._raw.call("GetTrainingJob", rpc.GetTrainingJobRequest(name=job_name(job))).training_job

    def list_jobs(self, *, state: int = 0, dataset_version: str = "", page_size: int = 0) -> Iterator[pb.TrainingJob]:
        token = ""
        while True:
            response = self._raw.call("ListTrainingJobs", rpc.ListTrainingJobsRequest(
                page_size=page_size, page_token=token, state=state,
                dataset_version=version_name(dataset_version) if dataset_version else ""))
            yield from response.training_jobs
            token = response.next_page_token
            if not token:
                return

    def cancel_job(self, job: str) -> pb.TrainingJob:
        return self._raw.call("CancelTrainingJob", rpc.CancelTrainingJobRequest(name=job_name(job))).training_job

    def pause_job(self, job: str) -> pb.TrainingJob:
        return self._raw.call("PauseTrainingJob", rpc.PauseTrainingJobRequest(name=job_name(job))).training_job

    def resume_job(self, job: str) -> pb.TrainingJob:
        return self._raw.call("ResumeTrainingJob", rpc.ResumeTrainingJobRequest(name=job_name(job))).training_job

    def delete_job(self, job: str) -> None:
        self._raw.call("DeleteTrainingJob", rpc.DeleteTrainingJobRequest(name=job_name(job)))

    def watch_job(self, job: str, *, reconnects: int = 5) -> Iterator[pb.TrainingJob]:
        """The job now, then at each change, until it ends; a broken stream is reopened (the server
        sends the current snapshot first, so nothing is missed but intermediate steps)."""
        failures = 0
        while True:
            try:
                for response in self._raw.stream("WatchTrainingJob", rpc.WatchTrainingJobRequest(name=job_name(job))):
                    failures = 0
                    yield response.training_job
                    if response.training_job.state in TERMINAL_STATES:
                        return
                return
            except SimulacraRpcError as error:
                failures += 1
                if error.code.name != "UNAVAILABLE" or failures > reconnects:
                    raise
                time.sleep(min(2.0 ** failures * 0.1, 5.0))

    def wait_job(self, job: str, *, progress: Callable[[pb.TrainingJob], None] | None = None) -> pb.TrainingJob:
        """Watch until the job ends (or pauses): its last state."""
        last = None
        for last in self.watch_job(job):
            if progress is not None:
                progress(last)
            if last.state == common_pb2.JOB_STATE_PAUSED:
                break
        assert last is not None
        return last

    def list_checkpoints(self, job: str) -> list[pb.Checkpoint]:
        out, token = [], ""
        while True:
            response = self._raw.call("ListCheckpoints", rpc.ListCheckpointsRequest(parent=job_name(job), page_token=token))
            out.extend(response.checkpoints)
            token = response.next_page_token
            if not token:
                return out

    def preview(self, job: str, kind: str = "samples") -> bytes:
        """PNG bytes: ``samples`` (latest grid), ``loss_curve`` or ``report``."""
        request = rpc.GetTrainingPreviewRequest(name=job_name(job), kind=PREVIEWS[kind])
        return self._raw.call("GetTrainingPreview", request).png

    # ---- registry ----------------------------------------------------------------------------------
    def create_model(self, model: str, *, description: str = "", tags: Mapping[str, str] | None = None) -> registry_pb.Model:
        request = registry_rpc.CreateModelRequest(model_id=model.removeprefix("models/"),
                                                  model=registry_pb.Model(description=description, tags=dict(tags or {})))
        return self._registry.call("CreateModel", request).model

    def get_model(self, model: str) -> registry_pb.Model:
        return self._registry.call("GetModel", registry_rpc.GetModelRequest(name=model_name(model))).model

    def list_models(self, *, tags: Mapping[str, str] | None = None, page_size: int = 0) -> Iterator[registry_pb.Model]:
        token = ""
        while True:
            response = self._registry.call("ListModels", registry_rpc.ListModelsRequest(page_size=page_size, page_token=token,
                                                                                         tags=dict(tags or {})))
            yield from response.models
            token = response.next_page_token
            if not token:
                return

    def delete_model(self, model: str, *, force: bool = False) -> None:
        self._registry.call("DeleteModel", registry_rpc.DeleteModelRequest(name=model_name(model), force=force))

    def get_version(self, reference: str) -> registry_pb.ModelVersion:
        """``MODEL@3``, ``MODEL@production``, ``MODEL`` (latest) or a full version name."""
        request = registry_rpc.GetModelVersionRequest(name=model_version_name(reference))
        return self._registry.call("GetModelVersion", request).model_version

    def list_versions(self, model: str, *, page_size: int = 0) -> Iterator[registry_pb.ModelVersion]:
        token = ""
        while True:
            response = self._registry.call("ListModelVersions", registry_rpc.ListModelVersionsRequest(
                parent=model_name(model), page_size=page_size, page_token=token))
            yield from response.model_versions
            token = response.next_page_token
            if not token:
                return

    def set_alias(self, model: str, alias: str, version: int, *, etag: str = "") -> registry_pb.Model:
        request = registry_rpc.SetModelAliasRequest(model=model_name(model), alias=alias, version=version, etag=etag)
        return self._registry.call("SetModelAlias", request).model

    def delete_alias(self, model: str, alias: str, *, etag: str = "") -> registry_pb.Model:
        request = registry_rpc.DeleteModelAliasRequest(model=model_name(model), alias=alias, etag=etag)
        return self._registry.call("DeleteModelAlias", request).model

    def delete_version(self, reference: str) -> None:
        self._registry.call("DeleteModelVersion", registry_rpc.DeleteModelVersionRequest(name=model_version_name(reference)))

    def import_onnx(
        self,
        model: str,
        onnx: bytes | str | os.PathLike[str],
        *,
        class_names: Sequence[str] = (),
        category_ids: Sequence[int] = (),
        attributes: Mapping[str, Sequence[str]] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> registry_pb.ModelVersion:
        """Register an ONNX generator trained elsewhere (the server checks its signature)."""
        data = onnx if isinstance(onnx, bytes) else Path(onnx).read_bytes()
        request = registry_rpc.ImportModelVersionRequest(
            model=model_name(model), onnx=data, class_names=list(class_names), category_ids=list(category_ids),
            attributes=[pb.AttributeSchema(name=k, values=list(v)) for k, v in (attributes or {}).items()],
            tags=dict(tags or {}),
        )
        return self._registry.call("ImportModelVersion", request).model_version

    def download(self, reference: str, file: str = "onnx") -> bytes:
        """A version's ``onnx`` file or its ``report_png`` summary."""
        request = registry_rpc.ReadModelVersionFileRequest(name=model_version_name(reference), file=FILES[file])
        return b"".join(r.chunk for r in self._registry.stream("ReadModelVersionFile", request, timeout=self._raw.timeout))
