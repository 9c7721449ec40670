"""Job calls of ``AnnotationClient``: import and export jobs, and the imports and exports built on them.

``JobCalls`` is a mixin of ``simulacra_client.annotation.AnnotationClient``
(which supplies ``_call``, ``_paged``, ``stub``, ``resume_policy``,
``upload_blobs`` and ``download_files``); use it through that class.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from simulacra_client.annotation_types import (
    EXPORT_JOBS,
    IMPORT_JOBS,
    TERMINAL_STATES,
    _WATCH_RETRIES,
    JobKind,
    ProgressCallback,
    check_relative_path,
    create_export_job_request,
    create_import_job_request,
    job_outcome,
    job_progress,
    jobs_parent,
    mnist_files,
    mnist_import_job,
)
from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.errors import from_rpc_error
from simulacra_client.retry import Backoff, RetryPolicy


class JobCalls:
    """Create, get, list, cancel, watch and wait for import and export jobs; import_coco/yolo/mnist, export."""

    stub: Any
    _call: Callable[..., Any]
    _paged: Callable[..., Iterator[Any]]
    resume_policy: Callable[[int], RetryPolicy]
    upload_blobs: Callable[..., list[str]]
    download_files: Callable[..., None]

    # ---- import jobs ------------------------------------------------------
    def create_import_job(self, dataset: str, job: pb.ImportJob, *, request_id: str | None = None) -> pb.ImportJob:
        return self._call("CreateImportJob", create_import_job_request(dataset, job, request_id)).import_job

    def get_import_job(self, name: str) -> pb.ImportJob:
        return self._get_job(IMPORT_JOBS, name)

    def list_import_jobs(self, dataset: str = "-", *, filter: str = "") -> Iterator[pb.ImportJob]:
        return self._list_jobs(IMPORT_JOBS, dataset, filter)

    def cancel_import_job(self, name: str) -> pb.ImportJob:
        return self._cancel_job(IMPORT_JOBS, name)

    def watch_import_job(self, name: str) -> Iterator[pb.ImportJob]:
        """Snapshots of the job until it ends (the last one has a terminal state)."""
        return self._watch_job(IMPORT_JOBS, name)

    def wait_import_job(self, name: str, *, progress: ProgressCallback | None = None) -> pb.ImportJob:
        """Watch the job to its end; the final job when it SUCCEEDED, else JobFailedError/JobCancelledError."""
        return _finish(self.watch_import_job(name), IMPORT_JOBS.doing, progress)

    # ---- export jobs ------------------------------------------------------
    def create_export_job(self, reference: str, job: pb.ExportJob, *, request_id: str | None = None) -> pb.ExportJob:
        return self._call("CreateExportJob", create_export_job_request(reference, job, request_id)).export_job

    def get_export_job(self, name: str) -> pb.ExportJob:
        return self._get_job(EXPORT_JOBS, name)

    def list_export_jobs(self, dataset: str = "-", *, filter: str = "") -> Iterator[pb.ExportJob]:
        return self._list_jobs(EXPORT_JOBS, dataset, filter)

    def cancel_export_job(self, name: str) -> pb.ExportJob:
        return self._cancel_job(EXPORT_JOBS, name)

    def watch_export_job(self, name: str) -> Iterator[pb.ExportJob]:
        return self._watch_job(EXPORT_JOBS, name)

    def wait_export_job(self, name: str, *, progress: ProgressCallback | None = None) -> pb.ExportJob:
        return _finish(self.watch_export_job(name), EXPORT_JOBS.doing, progress)

    # ---- either kind of job (JobKind) ----------------------------------------
    def _get_job(self, kind: JobKind, name: str) -> Any:
        return getattr(self._call(f"Get{kind.noun}Job", kind.get(name=name)), kind.field)

    def _list_jobs(self, kind: JobKind, dataset: str, filter: str) -> Iterator[Any]:
        return self._paged(f"List{kind.noun}Jobs", kind.listing(parent=jobs_parent(dataset), filter=filter), f"{kind.field}s")

    def _cancel_job(self, kind: JobKind, name: str) -> Any:
        return getattr(self._call(f"Cancel{kind.noun}Job", kind.cancel(name=name)), kind.field)

    def _watch_job(self, kind: JobKind, name: str) -> Iterator[Any]:
        return self._watch(f"Watch{kind.noun}Job", kind.watch(name=name), kind.field, lambda: self._get_job(kind, name))

    def _watch(self, method: str, request: Any, field: str, get: Callable[[], Any]) -> Iterator[Any]:
        backoff = Backoff(self.resume_policy(_WATCH_RETRIES))
        while True:
            try:
                for response in getattr(self.stub, method)(request):
                    backoff.reset()
                    job = getattr(response, field)
                    yield job
                    if job.state in TERMINAL_STATES:
                        return
                # The server ended the stream without a terminal state (draining
                # for a restart): look once more, and watch again if still running.
                job = get()
                if job.state in TERMINAL_STATES:
                    yield job
                    return
            except grpc.RpcError as error:
                if not backoff.policy.retryable(error) or not backoff.sleep():
                    raise from_rpc_error(error) from None

    # ---- imports ------------------------------------------------------------
    def import_coco(
        self,
        dataset: str,
        annotations_path: str | os.PathLike[str],
        images_dir: str | os.PathLike[str],
        *,
        split: str = "",
        box_bounds_policy: int = pb.BOX_BOUNDS_POLICY_REJECT,
        progress: ProgressCallback | None = None,
    ) -> pb.ImportJob:
        """Import a COCO JSON file and its images (``images_dir/<file_name>``).

        Uploads the JSON and the images as blobs (skipping those the server has),
        runs the import job and returns it once SUCCEEDED (``job.result``).
        """
        annotations_path = Path(annotations_path)
        file_names = _coco_file_names(annotations_path)
        images_dir = Path(images_dir)
        paths = [images_dir / name for name in file_names]
        missing = [name for name, path in zip(file_names, paths) if not path.is_file()]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise FileNotFoundError(f"{len(missing)} image(s) of {annotations_path} are not in {images_dir}: {shown}")
        digests = self.upload_blobs([annotations_path, *paths], progress=progress)
        source = pb.CocoImportSource(
            annotations=pb.ManifestFile(path=annotations_path.name, sha256=digests[0]),
            images=[pb.ManifestFile(path=name, sha256=digest) for name, digest in zip(file_names, digests[1:])],
            split=split,
        )
        job = self.create_import_job(dataset, pb.ImportJob(coco=source, box_bounds_policy=box_bounds_policy))
        return self.wait_import_job(job.name, progress=progress)

    def import_yolo(
        self,
        dataset: str,
        root: str | os.PathLike[str],
        class_names: Sequence[str],
        *,
        box_bounds_policy: int = pb.BOX_BOUNDS_POLICY_REJECT,
        progress: ProgressCallback | None = None,
    ) -> pb.ImportJob:
        """Import a YOLO directory: ``images/[SPLIT/]NAME.ext`` with ``labels/[SPLIT/]NAME.txt``.

        The first directory under ``images/`` names the split (else "train"); an
        image without a label file has no boxes.
        """
        root = Path(root)
        images = _yolo_layout(root)
        if not images:
            raise FileNotFoundError(f"no .png/.jpg/.jpeg images under {root / 'images'}")
        files: list[Path] = []
        for image, labels, _ in images:
            files.append(image)
            if labels is not None:
                files.append(labels)
        digests = dict(zip(files, self.upload_blobs(files, progress=progress)))

        def manifest(path: Path) -> pb.ManifestFile:
            return pb.ManifestFile(path=path.relative_to(root).as_posix(), sha256=digests[path])

        entries = [
            pb.YoloImportImage(image=manifest(image), labels=manifest(labels) if labels is not None else None, split=split)
            for image, labels, split in images
        ]
        source = pb.YoloImportSource(class_names=list(class_names), images=entries)
        job = self.create_import_job(dataset, pb.ImportJob(yolo=source, box_bounds_policy=box_bounds_policy))
        return self.wait_import_job(job.name, progress=progress)

    def import_mnist(
        self,
        dataset: str,
        images: np.ndarray,
        labels: np.ndarray | Sequence[int],
        *,
        split: str = "",
        limit: int = 0,
        progress: ProgressCallback | None = None,
    ) -> pb.ImportJob:
        """Import digits: ``images`` N x H x W uint8 (MNIST: 28 x 28), ``labels`` N integers 0..255.

        Writes the two IDX files in memory, uploads them and runs the MNIST import.
        """
        image_digest, label_digest = self.upload_blobs(list(mnist_files(images, labels)), progress=progress)
        job = self.create_import_job(dataset, mnist_import_job(image_digest, label_digest, split=split, limit=limit))
        return self.wait_import_job(job.name, progress=progress)

    # ---- exports ------------------------------------------------------------
    def export(
        self,
        reference: str,
        out_dir: str | os.PathLike[str],
        *,
        format: int,
        filter: str = "",
        skip_images: bool = False,
        progress: ProgressCallback | None = None,
    ) -> pb.ExportJob:
        """Export ``NAME@VERSION`` in ``format`` into ``out_dir``: COCO writes annotations.json + images/...,
        YOLO data.yaml, images/SPLIT/... and labels/SPLIT/... (``export_coco``, ``export_yolo``)."""
        job = self.create_export_job(reference, pb.ExportJob(format=format, filter=filter, skip_images=skip_images))
        job = self.wait_export_job(job.name, progress=progress)
        self.download_files(job.result.files, out_dir, progress=progress)
        return job

    export_coco = functools.partialmethod(export, format=pb.EXPORT_FORMAT_COCO)
    export_yolo = functools.partialmethod(export, format=pb.EXPORT_FORMAT_YOLO)


def _finish(snapshots: Iterator[Any], stage: str, progress: ProgressCallback | None) -> Any:
    job = None
    for job in snapshots:
        job_progress(job, stage, progress)
    return job_outcome(job)


def _coco_file_names(path: Path) -> list[str]:
    """The images' ``file_name`` of a COCO file, each checked to be a safe relative path."""
    try:
        document = json.loads(path.read_bytes())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not JSON: {error}") from None
    images = document.get("images") if isinstance(document, dict) else None
    if not isinstance(images, list):
        raise ValueError(f"{path} has no 'images' list: is it a COCO annotation file?")
    names = []
    for index, image in enumerate(images):
        name = image.get("file_name") if isinstance(image, dict) else None
        if not isinstance(name, str):
            raise ValueError(f"{path}: images[{index}].file_name must be a string")
        try:
            names.append(check_relative_path(name))
        except ValueError as error:
            raise ValueError(f"{path}: images[{index}].file_name: {error}") from None
    return names


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _yolo_layout(root: Path) -> list[tuple[Path, Path | None, str]]:
    """(image, label file or None, split) of a YOLO directory, sorted by path."""
    images_root = root / "images"
    found = []
    for image in sorted(images_root.rglob("*")):
        if not image.is_file() or image.suffix.lower() not in _IMAGE_SUFFIXES:
            continue
        relative = image.relative_to(images_root)
        split = relative.parts[0] if len(relative.parts) > 1 else ""
        labels = (root / "labels" / relative).with_suffix(".txt")
        found.append((image, labels if labels.is_file() else None, split))
    return found

