"""A training job from data to a reported ONNX generator, as the worker process runs it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable

import torch

from simulacra_services.core.storage import ObjectStore
from simulacra_services.training.data import DataSpec, LoadedData
from simulacra_services.training.export.onnx_export import export_generator
from simulacra_services.training.layout import job_prefix
from simulacra_services.training.loop.checkpoints import CheckpointInfo, CheckpointStore
from simulacra_services.training.loop.hyperparameters import Hyperparameters
from simulacra_services.training.loop.run import TrainingData, TrainingRun
from simulacra_services.training.loop.trainers import make_trainer
from simulacra_services.training.models import ModelConfig
from simulacra_services.training.report import pictures
from simulacra_services.training.report.quality import (
    FrechetSelector, draw_samples, quality_report, synthetic_conditions, validation_split,
)
from simulacra_services.training.worker import protocol

PREVIEW_COLUMNS = 8
PROGRESS_INTERVAL_SECONDS = 0.5
MAX_EVALUATION_SAMPLES = 10_000


def pick_device(preference: str) -> torch.device:
    if preference == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable("no CUDA device on this machine")
    return torch.device("cuda" if preference in ("cuda", "auto") and torch.cuda.is_available() else "cpu")


class DeviceUnavailable(Exception):
    pass


def data_fingerprint(data: TrainingData) -> str:
    digest = hashlib.sha256(data.images.numpy().tobytes())
    digest.update(data.labels.numpy().tobytes())
    if data.attributes is not None:
        digest.update(data.attributes.numpy().tobytes())
    return digest.hexdigest()


@dataclasses.dataclass
class JobRequest:
    job_id: str
    kind: str
    hp: Hyperparameters
    data: DataSpec
    export: dict
    device: str = "auto"
    checkpoint: CheckpointInfo | None = None
    attempt: int = 1

    @classmethod
    def from_json(cls, request: dict) -> JobRequest:
        spec = request["spec"]
        hp = spec["hyperparameters"] | {"diff_augment": tuple(spec["hyperparameters"].get("diff_augment", ()))}
        checkpoint = request.get("checkpoint")
        return cls(
            job_id=request["job_id"],
            kind=spec["kind"],
            hp=Hyperparameters(**hp),
            data=DataSpec.from_json(spec["data"]),
            export=spec.get("export", {}),
            device=spec.get("device", "auto"),
            checkpoint=CheckpointInfo(**checkpoint) if checkpoint else None,
            attempt=request.get("attempt", 1),
        )


class TrainingPipeline:
    def __init__(self, request: JobRequest, objects: ObjectStore, emit: protocol.EventWriter, stop: Callable[[], bool]) -> None:
        self.request = request
        self.objects = objects
        self.emit = emit
        self.stop = stop
        self.prefix = job_prefix(request.job_id)
        self.checkpoints = CheckpointStore(objects, self.prefix)

    def model_config(self, data: LoadedData) -> ModelConfig:
        hp = self.request.hp
        return ModelConfig(
            latent_dim=hp.latent_dim, channels=hp.channels, height=hp.image_height, width=hp.image_width,
            num_classes=len(data.class_names) if hp.conditional else 0,
            attribute_sizes=data.attribute_sizes, base_width=hp.base_width,
        )

    def run(self, data: LoadedData) -> None:
        request, hp = self.request, self.request.hp
        device = pick_device(request.device)
        self.emit(protocol.DATA, train=len(data.train), holdout=len(data.holdout), skipped=data.skipped,
                  class_names=list(data.class_names), category_ids=list(data.category_ids),
                  attributes=[[name, list(values)] for name, values in data.attribute_values], device=str(device))
        config = self.model_config(data)
        fingerprint = data_fingerprint(data.train)
        trainer = make_trainer(request.kind, config, hp, device)
        run = TrainingRun(trainer, data.train)
        self.best: dict | None = None
        if request.checkpoint is not None:
            state = self.checkpoints.load(request.checkpoint)
            if state.get("data_fingerprint") != fingerprint:
                raise ValueError("the dataset read now differs from the one the checkpoint was trained on")
            run.load_state_dict(state)
            self.best = state.get("best")
        self.validation, self.test, self.disjoint = validation_split(data.holdout, hp.seed)
        trainer.use_validation(self.validation if len(self.validation) >= 2 and self.disjoint else None)  # ADA's r_v
        selection = self.validation if len(self.validation) >= 2 else data.train
        self.selector = FrechetSelector(data.train, selection, config.num_classes, hp.seed)
        self.emit(protocol.STAGE, stage="TRAINING")
        self._train(run, fingerprint, data)
        if not run.done:
            self.emit(protocol.STOPPED, step=run.step)
            return
        self.emit(protocol.STAGE, stage="EXPORTING")
        self._finish(run, config, data)

    def _save_checkpoint(self, run: TrainingRun, fingerprint: str) -> None:
        losses = {k: v for k, v in (run.history[-1] if run.history else {}).items() if k != "step"}
        fd = self.selector.score(run.trainer.sampler(), run.trainer.config.latent_dim)
        if self.best is None or fd < self.best["frechet_distance"] or self.best["step"] == run.step:
            self.best = {"step": run.step, "frechet_distance": fd, "object_key": self.checkpoints.key(run.step)}
        state = run.state_dict() | {"data_fingerprint": fingerprint, "best": self.best}
        info = self.checkpoints.save(run.step, state, epoch=run.epoch, losses=losses | {"frechet_distance": fd})
        self.emit(protocol.CHECKPOINT, **info.to_json(), epoch=run.epoch, losses=losses, frechet_distance=fd, best=self.best)

    def _preview(self, run: TrainingRun, config: ModelConfig, data: LoadedData) -> None:
        classes = max(config.num_classes, 1)
        labels = torch.arange(classes).repeat_interleave(PREVIEW_COLUMNS)
        attributes = None
        if data.train.attributes is not None:
            attributes = data.train.attributes[torch.arange(len(labels)) % len(data.train)]
        samples = draw_samples(run.trainer.sampler(), labels, attributes, config.latent_dim, seed=run.trainer.hp.seed)
        grid_key = f"{self.prefix}/previews/{run.step:010d}.png"
        curve_key = f"{self.prefix}/previews/loss-curve.png"
        self.objects.put(grid_key, pictures.grid_png(samples, rows=classes), content_type="image/png")
        self.objects.put(curve_key, pictures.loss_curve_png(run.history), content_type="image/png")
        self.emit(protocol.PREVIEW, step=run.step, grid_key=grid_key, loss_curve_key=curve_key)

    def _train(self, run: TrainingRun, fingerprint: str, data: LoadedData) -> None:
        hp = self.request.hp
        config = run.trainer.config
        started, last = time.monotonic(), 0.0
        start_step = run.step

        def on_step(run: TrainingRun, losses: dict) -> None:
            nonlocal last
            now = time.monotonic()
            if run.step % hp.checkpoint_every_steps == 0 and not run.done:
                self._save_checkpoint(run, fingerprint)
            if hp.preview_every_steps and run.step % hp.preview_every_steps == 0:
                self._preview(run, config, data)
            if now - last >= PROGRESS_INTERVAL_SECONDS or run.done:
                last = now
                rate = (run.step - start_step) * run.schedule.batch_size / max(now - started, 1e-9)
                eta = (run.total_steps - run.step) * run.schedule.batch_size / rate if rate > 0 else None
                self.emit(protocol.PROGRESS, step=run.step, total_steps=run.total_steps, epoch=run.epoch,
                          losses=losses, samples_per_second=rate, eta_seconds=eta)

        run.run(on_step=on_step, should_stop=self.stop)
        self._save_checkpoint(run, fingerprint)  # the last state, whether done or stopped

    def _finish(self, run: TrainingRun, config: ModelConfig, data: LoadedData) -> None:
        hp = self.request.hp
        exported_step = run.step
        if self.best is not None and self.best["step"] != run.step:
            best = self.checkpoints.load(CheckpointInfo(**self._info_of(self.best)))
            run.trainer.load_state_dict(best["trainer"])
            exported_step = self.best["step"]
        sampler = run.trainer.sampler().to("cpu").eval()
        exported = export_generator(sampler, latent_dim=config.latent_dim, num_classes=config.num_classes,
                                    attribute_sizes=config.attribute_sizes, seed=hp.seed)
        onnx_key = f"{self.prefix}/export/generator.onnx"
        self.objects.put(onnx_key, exported.onnx_bytes, content_type="application/octet-stream")
        self.emit(protocol.STAGE, stage="EVALUATING")
        holdout, holdout_is_train = self.test, False
        if len(holdout) < 2:
            holdout, holdout_is_train = data.train, True
        wanted = int(self.request.export.get("evaluation_sample_count") or 0)
        count = min(wanted or max(len(holdout), 500), MAX_EVALUATION_SAMPLES)
        labels, attributes = synthetic_conditions(data.train, holdout, count, hp.seed)
        samples = draw_samples(sampler, labels, attributes, config.latent_dim, seed=hp.seed)
        report = quality_report(data.train, holdout, TrainingData(samples, labels, attributes),
                                num_classes=config.num_classes, class_names=data.class_names, seed=hp.seed)
        report["holdout_is_train"] = holdout_is_train
        report["checkpoint"] = {"step": exported_step, "last_step": run.step, "selected_by": "frechet_distance",
                                "frechet_distance_at_selection": (self.best or {}).get("frechet_distance"),
                                "selection_items": len(self.validation), "report_items": len(holdout),
                                "selection_disjoint_from_report": self.disjoint and not holdout_is_train}
        report["export"] = {"onnx_opset": exported.opset, "parity_max_abs_diff": exported.parity_max_abs_diff,
                            "parity_samples": exported.parity_samples}
        report_key = f"{self.prefix}/export/report.json"
        self.objects.put(report_key, json.dumps(report).encode(), content_type="application/json")
        classes = max(config.num_classes, 1)
        grid_labels = torch.arange(classes).repeat_interleave(PREVIEW_COLUMNS)
        grid_attributes = None if data.train.attributes is None else data.train.attributes[torch.arange(len(grid_labels)) % len(data.train)]
        grid = draw_samples(sampler, grid_labels, grid_attributes, config.latent_dim, seed=hp.seed)
        report_png_key = f"{self.prefix}/export/report.png"
        self.objects.put(report_png_key, pictures.report_png(report, grid, rows=classes), content_type="image/png")
        curve_key = f"{self.prefix}/previews/loss-curve.png"
        self.objects.put(curve_key, pictures.loss_curve_png(run.history), content_type="image/png")
        self.emit(
            protocol.RESULT,
            step=run.step,
            onnx_key=onnx_key,
            onnx_sha256=hashlib.sha256(exported.onnx_bytes).hexdigest(),
            report_key=report_key,
            report_png_key=report_png_key,
            loss_curve_key=curve_key,
            model_config=config.to_json(),
            parity_max_abs_diff=exported.parity_max_abs_diff,
            checkpoint=self.checkpoints.key(exported_step),
            exported_step=exported_step,
        )

    def _info_of(self, best: dict) -> dict:
        sidecar = json.loads(self.objects.get(best["object_key"].removesuffix(".pt") + ".json"))
        return {k: sidecar[k] for k in ("step", "object_key", "sha256", "size_bytes")}
