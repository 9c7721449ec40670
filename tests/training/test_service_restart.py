"""kill -9 of the whole training service mid-job: the next service takes the job over and finishes it."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from simulacra_client.api.common.v1 import common_pb2
from simulacra_client.channel import open_channel, wait_for_ready_health
from simulacra_client.training import TrainingClient
from simulacra_services.core.storage import open_object_store
from tests.training.conftest import training_settings

SIMULACRA = str(Path(sys.executable).parent / "simulacra")
HYPERPARAMETERS = {"batch_size": 8, "max_steps": 60, "epochs": 1000, "base_width": 8, "latent_dim": 8,
                   "checkpoint_every_steps": 10}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(env: dict[str, str], address: str) -> subprocess.Popen:
    process = subprocess.Popen([SIMULACRA, "serve", "training"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    channel = open_channel(address)
    try:
        wait_for_ready_health(channel, "simulacra.training.v1.TrainingService", timeout=120)
    finally:
        channel.close()
    return process


def scenario(env: dict[str, str], address: str, version: str) -> tuple:
    first = start_service(env, address)
    try:
        with TrainingClient(address) as client:
            job = client.create_job(version, "gan", model="restarted", hyperparameters=HYPERPARAMETERS, device="cpu",
                                    evaluation_sample_count=30, holdout_fraction=0.25)
            deadline = time.monotonic() + 120
            while not client.get_job(job.name).training_progress.latest_checkpoint:
                assert time.monotonic() < deadline, "no checkpoint within 120 s"
                time.sleep(0.2)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    second = start_service(env, address)
    try:
        with TrainingClient(address) as client:
            return client.wait_job(job.name), first.pid
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(60)


async def test_kill_9_of_the_service_resumes_the_job_in_the_next_one(annotation_store, tmp_path):
    version = await asyncio.to_thread(annotation_store.import_digits, "digits")
    settings = training_settings(annotation_store, tmp_path / "training").replace(training_port=free_port(), training_metrics_port=0)
    env = os.environ | settings.to_env() | {"SIMULACRA_TRAINING_LEASE_SECONDS": "2", "SIMULACRA_TRAINING_THREADS": "1"}
    job, _ = await asyncio.to_thread(scenario, env, settings.address("training"), version)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    assert job.attempt == 2 and job.training_progress.step == 60
    assert job.model_version == "models/restarted/versions/1"
    state = torch.load(io.BytesIO(open_object_store(settings).get(
        f"training-jobs/{job.name.split('/')[1]}/checkpoints/0000000060.pt")), weights_only=True)
    assert [entry["step"] for entry in state["history"]] == list(range(1, 61))  # one continuous loss history
