"""The demo's generator stages: train the enhanced GAN on the scarce set, then serve it.

Through the service contracts only (the SDK's generated stubs): CreateTrainingJob,
WatchTrainingJob (progress printed every few seconds), and the sampling
service's LoadGenerator. The trained version is registered by the training job
in the registry the sampling service reads.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import grpc

from simulacra_client.api.common.v1 import common_pb2
from simulacra_client.api.sampling.v1 import sampling_service_pb2 as sampling_rpc
from simulacra_client.api.sampling.v1 import sampling_service_pb2_grpc as sampling_grpc
from simulacra_client.api.training.v1 import model_registry_service_pb2 as registry_rpc
from simulacra_client.api.training.v1 import model_registry_service_pb2_grpc as registry_grpc
from simulacra_client.api.training.v1 import training_job_pb2 as job_pb
from simulacra_client.api.training.v1 import training_service_pb2 as training_rpc
from simulacra_client.api.training.v1 import training_service_pb2_grpc as training_grpc
from simulacra_client.channel import open_channel
from simulacra_client.errors import SimulacraRpcError, from_rpc_error
from simulacra_services.core.config import Settings

TERMINAL = (common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED)
STAGES = {v.number: v.name.removeprefix("TRAINING_STAGE_").lower().replace("_", " ") for v in job_pb.TrainingStage.DESCRIPTOR.values if v.number}


def _doing(job: job_pb.TrainingJob) -> str:
    """The job's training stage, or its state before it has one ("queued")."""
    return STAGES.get(job.training_progress.stage) or common_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()


@dataclass
class TrainedGenerator:
    version: str = ""  # models/M/versions/N; "" when no generator
    problem: str = ""  # why there is none
    report: dict[str, float] = field(default_factory=dict)
    minutes: float = 0.0
    steps: int = 0
    pictures: dict[str, bytes] = field(default_factory=dict)  # "loss_curve" / "report": PNG bytes from the training service


def _channel(settings: Settings, service: str) -> grpc.Channel:
    return open_channel(settings.address(service), token=settings.auth_token or None, tls_ca=settings.tls_ca or None)


def train_generator(settings: Settings, dataset_version: str, *, model: str, steps: int, evaluation_samples: int, say) -> TrainedGenerator:  # noqa: ANN001
    """Train an enhanced GAN on the version's train split (val as holdout); the registered version or the problem."""
    # Steps, not epochs, bound the run (a scarce set is a few batches per epoch); a short run
    # needs a faster generator EMA than the default 0.999 to move away from its initial weights;
    # width 16 and batch 32 keep a step well under a second on two CPU cores.
    hyperparameters = job_pb.Hyperparameters(
        max_steps=steps, epochs=100_000, seed=0, ema_decay=0.99 if steps < 2000 else 0.999, base_width=16, batch_size=32,
        checkpoint_every_steps=max(50, steps // 4), preview_every_steps=max(50, steps // 2),
    )
    job = job_pb.TrainingJob(
        dataset_version=dataset_version, model_kind=job_pb.MODEL_KIND_ENHANCED_GAN, hyperparameters=hyperparameters,
        data=job_pb.TrainingDataSpec(train_split="train", holdout_split="val"),
        export=job_pb.ExportSpec(model=f"models/{model}", evaluation_sample_count=evaluation_samples), display_name="simulacra demo: enhanced GAN on the scarce digits",
    )
    started = time.monotonic()
    with _channel(settings, "training") as channel:
        stub = training_grpc.TrainingServiceStub(channel)
        try:
            created = stub.CreateTrainingJob(training_rpc.CreateTrainingJobRequest(training_job=job, request_id=str(uuid.uuid4())), timeout=60).training_job
            say(f"   {created.name}: {_doing(created)}")
            final = _watch(stub, created.name, say)
        except KeyboardInterrupt:
            _cancel(stub, locals().get("created"), say)
            raise
        except grpc.RpcError as error:
            typed = from_rpc_error(error)
            return TrainedGenerator(problem=f"the training service answered {typed.code.name} ({typed.reason or 'no reason'}): {typed.message}")
    minutes = (time.monotonic() - started) / 60
    if final.state != common_pb2.JOB_STATE_SUCCEEDED:
        state = common_pb2.JobState.Name(final.state)
        return TrainedGenerator(problem=f"the training job ended {state}: {final.error.reason} {final.error.message}".strip(), minutes=minutes)
    if not final.model_version:
        return TrainedGenerator(problem="the training job registered no model version (quality gate not passed)", minutes=minutes)
    report = final.quality_report if final.HasField("quality_report") else _registered_report(settings, final.model_version)
    pictures = _pictures(settings, final.name)
    if report is None:
        return TrainedGenerator(final.model_version, minutes=minutes, steps=int(final.training_progress.step), pictures=pictures)
    figures = {
        "Fréchet distance": report.fidelity.frechet_distance,
        "Fréchet distance, real vs real": report.fidelity.frechet_distance_real_baseline,
        "precision": report.fidelity.precision,
        "recall": report.fidelity.recall,
        "label fidelity": report.fidelity.label_fidelity,
        "TSTR accuracy": report.utility.tstr_accuracy,
        "TRTR accuracy": report.utility.trtr_accuracy,
        "memorization rate": report.privacy.memorization_rate,
    }
    return TrainedGenerator(final.model_version, report=figures, minutes=minutes, steps=int(final.training_progress.step), pictures=pictures)


def _pictures(settings: Settings, job: str) -> dict[str, bytes]:
    """The job's loss-curve and quality-report PNGs (GetTrainingPreview); a kind the service has not drawn is left out."""
    kinds = {"loss_curve": training_rpc.PREVIEW_KIND_LOSS_CURVE, "report": training_rpc.PREVIEW_KIND_REPORT}
    pictures: dict[str, bytes] = {}
    with _channel(settings, "training") as channel:
        stub = training_grpc.TrainingServiceStub(channel)
        for key, kind in kinds.items():
            try:
                pictures[key] = stub.GetTrainingPreview(training_rpc.GetTrainingPreviewRequest(name=job, kind=kind), timeout=60).png
            except grpc.RpcError:
                continue
    return pictures


def _registered_report(settings: Settings, version: str) -> object | None:
    """The quality report the registry keeps with the model version (None when it has none)."""
    with _channel(settings, "training") as channel:
        try:
            registered = registry_grpc.ModelRegistryServiceStub(channel).GetModelVersion(registry_rpc.GetModelVersionRequest(name=version), timeout=60)
        except grpc.RpcError:
            return None
    model_version = registered.model_version
    return model_version.quality_report if model_version.HasField("quality_report") else None


def _watch(stub: training_grpc.TrainingServiceStub, name: str, say) -> job_pb.TrainingJob:  # noqa: ANN001
    last_said = 0.0
    last_stage: tuple[int, int] | None = None
    final = None
    for response in stub.WatchTrainingJob(training_rpc.WatchTrainingJobRequest(name=name), timeout=3600):
        final = response.training_job
        progress = final.training_progress
        stage = (final.state, progress.stage)
        # Every change of state or stage is said (a short run may pass through training within seconds), then every 5 s.
        if stage != last_stage or time.monotonic() - last_said > 5 or final.state in TERMINAL:
            last_said, last_stage = time.monotonic(), stage
            losses = ", ".join(f"{k} {v:.3f}" for k, v in sorted(progress.losses.items()))
            steps = f" step {progress.step}/{progress.total_steps}" if progress.total_steps else ""
            ada = f", ADA p {progress.ada_p:.2f}" if progress.ada_p else ""
            say(f"   {_doing(final)}{steps}{' (' + losses + ')' if losses else ''}{ada}")
        if final.state in TERMINAL:
            return final
    if final is None:
        raise RuntimeError(f"{name}: the watch ended without a job")
    return stub.GetTrainingJob(training_rpc.GetTrainingJobRequest(name=name), timeout=60).training_job


def _cancel(stub: training_grpc.TrainingServiceStub, created: job_pb.TrainingJob | None, say) -> None:  # noqa: ANN001
    if created is None:
        return
    say(f"   cancelling {created.name}")
    try:
        stub.CancelTrainingJob(training_rpc.CancelTrainingJobRequest(name=created.name), timeout=10)
    except grpc.RpcError:
        pass


def serve_generator(settings: Settings, version: str) -> str:
    """Load ``version`` on the sampling service; "" when it serves it, else the problem."""
    with _channel(settings, "sampling") as channel:
        try:
            sampling_grpc.SamplingServiceStub(channel).LoadGenerator(sampling_rpc.LoadGeneratorRequest(name=version), timeout=120)
            return ""
        except grpc.RpcError as error:
            typed: SimulacraRpcError = from_rpc_error(error)
            return f"the sampling service could not load {version}: {typed.code.name} ({typed.reason}) {typed.message}"
