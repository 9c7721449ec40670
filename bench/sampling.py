#!/usr/bin/env python3
"""Benchmark of the sampling service against in-process ONNX Runtime on the same models.

    python bench/sampling.py              # full run (a few minutes on 2 cores)
    python bench/sampling.py --quick      # fewer samples and shorter loads (about a minute)
    python bench/sampling.py --json bench/results/sampling.json

Two generators, exported here with torch (the service process itself never imports it):
``digits``, conditional 1x28x28 (10 classes, DCGAN-like), and ``scenes``, RGB 3x64x64. The
service runs in its own process (``simulacra serve sampling``), as in production, over local
files. For each generator, every figure comes with its baseline from the same run:

  (a) StreamSamples, uint8, batch 64, through the SDK: samples/s against in-process ONNX
      Runtime running batch 64 (``session.run`` + uint8 conversion) in a loop;
  (b) unary Sample of one sample, one call after another: p50/p99 latency against in-process
      ``session.run`` of batch 1, and the difference (the service's overhead per call);
  (c) 32 concurrent clients (grpc.aio, one process), each asking one sample at a time:
      samples/s and p99 with dynamic batching and without (a second server with
      SIMULACRA_SAMPLING_DYNAMIC_BATCHING=false), against the limit: in-process batch 64.

  (d) with --mlserver (the default of a full run): the same 32-client load written with
      tritonclient (bench/sampling_kserve/triton_load.py, raw tensors z and labels through
      ModelInfer) against this service's KServe endpoint and against MLServer 1.7.1 serving the
      same ONNX file (bench/sampling_kserve/mlserver_onnx.py, adaptive batching up to 64). Both
      tools live in a virtual environment of their own (.venv/bench-kserve, made on first use):
      tritonclient and MLServer need protobuf < 7, the suite runs protobuf 7. Each load also
      reports how busy the server's ONNX Runtime was (share of the wall time spent in
      ``session.run``) and its mean batch: ours from KServe ModelStatistics, MLServer's from its
      runtime's own counters. A server whose inference is busy all the time is compute bound.
  (e) where one unary call's time goes (bench/sampling_breakdown.py): a bare grpc.aio echo
      server answering the same bytes (Python gRPC's floor), the same with core's interceptor, and
      each stage of our handler timed in process; ``--breakdown-only`` runs (b) and (e) alone.

The load generator is Python on the same 2 cores as the server: the figures measure the whole
path (client included), as a training job would see it. For every 32-client load of (c) and (d)
the bench also counts CPU from /proc (user + system of all threads, over the load window): of the
load generator, of the server (our service; MLServer's process and all under it), and of the
in-process batch-64 limit's own process during its run (ONNX Runtime's threads included). From
these it prints the throughput those CPU costs allow on all the cores (cores / (client + server CPU
per sample)) and with as many busy cores as the limit had (limit CPU per sample / load CPU per
sample), each as a share of the limit, next to the measured share, with the cores the load kept
busy and the busiest thread of the service.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "services"), str(ROOT / "clients" / "python")]

import grpc  # noqa: E402
import onnxruntime as ort  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from simulacra_client.api.sampling.v1 import generator_pb2 as gen_pb  # noqa: E402
from simulacra_client.api.sampling.v1 import sampling_service_pb2 as api  # noqa: E402
from simulacra_client.api.sampling.v1 import sampling_service_pb2_grpc as api_grpc  # noqa: E402
from simulacra_client.sampling import SamplingClient  # noqa: E402
from simulacra_services.core.registry import GeneratorSignature, ModelRegistry  # noqa: E402
from simulacra_services.core.storage import LocalObjectStore  # noqa: E402
from simulacra_services.sampling.runtime import encode, noise  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from sampling_breakdown import breakdown, print_breakdown, process_cpu_seconds, thread_cpu_seconds, tree_cpu_seconds  # noqa: E402

SERVICE_PIDS: dict[str, int] = {}
"""address -> pid of the service process serving it (for its CPU time)."""

DIGITS = GeneratorSignature(latent_dim=64, channels=1, height=28, width=28, num_classes=10)
SCENES = GeneratorSignature(latent_dim=128, channels=3, height=64, width=64, num_classes=4)


def export(sig: GeneratorSignature) -> bytes:
    """A DCGAN-like generator for ``sig`` (random weights: speed does not depend on training)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if sig.height == 28:
        start, widths = 7, [128, 64]
    else:
        start, widths = 4, [256, 128, 64, 32]

    class Generator(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(max(sig.num_classes, 1), 16)
            self.fc = nn.Linear(sig.latent_dim + 16, widths[0] * start * start)
            layers: list[nn.Module] = []
            for a, b in zip(widths, widths[1:]):
                layers += [nn.ConvTranspose2d(a, b, 4, 2, 1), nn.BatchNorm2d(b), nn.ReLU()]
            layers += [nn.ConvTranspose2d(widths[-1], sig.channels, 4, 2, 1), nn.Tanh()]
            self.net = nn.Sequential(*layers)

        def forward(self, z, labels):  # noqa: ANN001, ANN201
            h = torch.relu(self.fc(torch.cat([z, self.embed(labels)], 1)))
            return self.net(h.view(-1, widths[0], start, start))

    buffer = io.BytesIO()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Generator().eval(), (torch.zeros(2, sig.latent_dim), torch.zeros(2, dtype=torch.long)), buffer,
            input_names=["z", "labels"], output_names=["samples"],
            dynamic_axes={"z": {0: "n"}, "labels": {0: "n"}, "samples": {0: "n"}}, opset_version=17, dynamo=False,
        )
    return buffer.getvalue()


# ---- the service in its own process ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def service(data_dir: Path, **env: str) -> Iterator[str]:
    port = _free_port()
    environ = {
        **os.environ, "SIMULACRA_DATA_DIR": str(data_dir), "SIMULACRA_SAMPLING_PORT": str(port),
        "SIMULACRA_SAMPLING_METRICS_PORT": "0", "SIMULACRA_LOG_LEVEL": "WARNING",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "services"), str(ROOT / "clients" / "python")]), **env,
    }
    process = subprocess.Popen([sys.executable, "-m", "simulacra_services.cli.main", "serve", "sampling"], env=environ, cwd=ROOT)
    address = f"127.0.0.1:{port}"
    SERVICE_PIDS[address] = process.pid
    try:
        with grpc.insecure_channel(address) as channel:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2).status == 1:
                        break
                except grpc.RpcError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the sampling service did not start")
                time.sleep(0.2)
        yield address
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


# ---- in-process baselines -----------------------------------------------------------------------


def ort_session(onnx: bytes, *, intra_op_threads: int = 0, spinning: bool = False) -> ort.InferenceSession:
    """The session the service makes by default (GeneratorSession): same threads, no spinning;
    the keywords as SIMULACRA_SAMPLING_INTRA_OP_THREADS / _SPINNING (bench/sampling_threads.py)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = intra_op_threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(onnx, sess_options=options, providers=["CPUExecutionProvider"])


def in_process_rate(session: ort.InferenceSession, sig: GeneratorSignature, batch: int, seconds: float) -> tuple[float, float]:
    """Samples/s of ``session.run`` + uint8 at ``batch`` in a loop, and this process's CPU seconds
    per sample meanwhile (all threads: ONNX Runtime's intra-op threads included)."""
    z = noise.latents(1, np.arange(batch), sig.latent_dim)
    labels = noise.labels(1, np.arange(batch), {}, sig.num_classes)
    session.run(["samples"], {"z": z, "labels": labels})
    done, started, cpu = 0, time.perf_counter(), process_cpu_seconds(os.getpid())
    while time.perf_counter() - started < seconds:
        (out,) = session.run(["samples"], {"z": z, "labels": labels})
        encode.to_uint8_inplace(out)
        done += batch
    return done / (time.perf_counter() - started), (process_cpu_seconds(os.getpid()) - cpu) / done


def in_process_latency(session: ort.InferenceSession, sig: GeneratorSignature, calls: int) -> list[float]:
    z = noise.latents(1, np.arange(1), sig.latent_dim)
    labels = np.zeros(1, np.int64)
    out = []
    for _ in range(calls):
        started = time.perf_counter()
        session.run(["samples"], {"z": z, "labels": labels})
        out.append(time.perf_counter() - started)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ---- the measurements ---------------------------------------------------------------------------


def stream_rate(address: str, model: str, count: int) -> float:
    with SamplingClient(address) as client:
        list(client.stream(model, count=64, batch_size=64, format="uint8"))  # loads and warms
        started = time.perf_counter()
        got = sum(len(b) for b in client.stream(model, count=count, batch_size=64, format="uint8", max_in_flight=4))
        return got / (time.perf_counter() - started)


def unary_latency(address: str, model: str, calls: int) -> tuple[list[float], float]:
    """Seconds of each one-sample call, one after another, and the service's CPU seconds per call."""
    with grpc.insecure_channel(address) as channel:
        stub = api_grpc.SamplingServiceStub(channel)
        name = f"models/{model}/versions/1"
        for i in range(50):
            stub.Sample(api.SampleRequest(generator=name, count=1, seed=1, start_index=i))
        out = []
        cpu = process_cpu_seconds(SERVICE_PIDS[address])
        for i in range(calls):
            started = time.perf_counter()
            stub.Sample(api.SampleRequest(generator=name, count=1, seed=1, start_index=i, format=gen_pb.SAMPLE_FORMAT_UINT8))
            out.append(time.perf_counter() - started)
        return out, (process_cpu_seconds(SERVICE_PIDS[address]) - cpu) / calls


async def _concurrent(address: str, model: str, clients: int, seconds: float) -> dict[str, float]:
    name = f"models/{model}/versions/1"
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = api_grpc.SamplingServiceStub(channel)
        await stub.Sample(api.SampleRequest(generator=name, count=1))
        stop = time.perf_counter() + seconds

        async def one(k: int) -> int:
            done = 0
            while time.perf_counter() < stop:
                started = time.perf_counter()
                await stub.Sample(api.SampleRequest(generator=name, count=1, seed=k, start_index=done, format=gen_pb.SAMPLE_FORMAT_UINT8))
                latencies.append(time.perf_counter() - started)
                done += 1
            return done

        server = SERVICE_PIDS[address]
        started, client_cpu, server_cpu = time.perf_counter(), process_cpu_seconds(os.getpid()), tree_cpu_seconds(server)
        threads = thread_cpu_seconds(server)
        total = sum(await asyncio.gather(*(one(k) for k in range(clients))))
        elapsed = time.perf_counter() - started
        client_cpu, server_cpu = process_cpu_seconds(os.getpid()) - client_cpu, tree_cpu_seconds(server) - server_cpu
        threads = {k: v - threads.get(k, 0.0) for k, v in thread_cpu_seconds(server).items()}
    busiest = max(threads, key=threads.__getitem__)
    return {
        "samples_per_s": total / elapsed, "seconds": elapsed, "p50_ms": pct(latencies, 0.5) * 1e3, "p99_ms": pct(latencies, 0.99) * 1e3,
        "client_cpu_per_sample_us": client_cpu / total * 1e6, "server_cpu_per_sample_us": server_cpu / total * 1e6,
        "cores_busy": (client_cpu + server_cpu) / elapsed, "client_busy_share": client_cpu / elapsed,
        "server_busiest_thread": busiest.rpartition("/")[0], "server_busiest_thread_busy_share": threads[busiest] / elapsed,
    }


def concurrent(address: str, model: str, clients: int, seconds: float) -> dict[str, float]:
    return asyncio.run(_concurrent(address, model, clients, seconds))


KSERVE_VENV = ROOT / ".venv" / "bench-kserve"
KSERVE_PACKAGES = ["mlserver==1.7.1", "tritonclient[grpc]==2.73.0", "onnxruntime"]


def kserve_python() -> Path:
    """The python of the virtual environment with MLServer and tritonclient (made once)."""
    python = KSERVE_VENV / "bin" / "python"
    marker = KSERVE_VENV / ".installed"
    if marker.exists() and marker.read_text() == " ".join(KSERVE_PACKAGES):
        return python
    print(f"installing {', '.join(KSERVE_PACKAGES)} into {KSERVE_VENV} (once)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(KSERVE_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *KSERVE_PACKAGES], check=True)
    marker.write_text(" ".join(KSERVE_PACKAGES))
    return python


def kserve_counters(address: str, model: str) -> tuple[int, int, float]:
    """(inferences, rows, seconds of inference) of our service's model so far (KServe ModelStatistics)."""
    from simulacra_client.api.inference import grpc_service_pb2 as kserve
    from simulacra_client.api.inference import grpc_service_pb2_grpc as kserve_grpc

    with grpc.insecure_channel(address) as channel:
        stats = kserve_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(kserve.ModelStatisticsRequest(name=model), timeout=10)
    s = stats.model_stats[0]
    return s.execution_count, s.inference_count, s.inference_stats.compute_infer.ns / 1e9


def mlserver_counters(work: Path, model: str) -> tuple[int, int, float]:
    """The same counters, from the MLServer runtime's counters.json (bench/sampling_kserve/mlserver_onnx.py)."""
    path = work / model / "counters.json"
    if not path.exists():
        return 0, 0, 0.0
    c = json.loads(path.read_text())
    return int(c["runs"]), int(c["rows"]), float(c["run_seconds"])


def with_inference_share(load: dict[str, float], before: tuple[int, int, float], after: tuple[int, int, float]) -> dict[str, float]:
    """``load`` plus the share of its wall time the server spent inferring, and its mean batch."""
    runs, rows, seconds = (a - b for a, b in zip(after, before))
    elapsed = load.get("seconds") or load["requests"] / load["samples_per_s"]
    return {**load, "inference_busy_share": seconds / elapsed, "mean_batch": rows / runs if runs else 0.0}


def cpu_accounting(f: dict[str, Any], cores: int, aim: float = 0.8) -> None:
    """Add to each 32-client load of ``f`` the throughput its measured CPU per sample allows on
    ``cores`` (client and server on the same cores: cores / (client + server CPU per sample)), as
    samples/s and as a share of the in-process batch-64 limit; the share it allows with as many
    busy cores as the limit run had (limit CPU per sample / load CPU per sample: this one does not
    depend on how many cores other work left to either run); and the CPU per sample left to the
    client and the per-request path at ``aim`` of the limit once batch-64 inference has had its own."""
    limit = f["in_process_batch64_samples_per_s"]
    for key in ("concurrent_batching", "concurrent_no_batching", "kserve_tritonclient", "mlserver_tritonclient"):
        load = f.get(key)
        if load is None or "server_cpu_per_sample_us" not in load:
            continue
        per_sample = (load["client_cpu_per_sample_us"] + load["server_cpu_per_sample_us"]) / 1e6
        load["cpu_ceiling_samples_per_s"] = cores / per_sample
        load["cpu_ceiling_share_of_limit"] = cores / per_sample / limit
        # Independent of how many cores either run got: with as many cores busy as the limit had,
        # the load reaches at most the ratio of the CPU each spends on a sample.
        load["cpu_share_of_limit_on_equal_cores"] = f["in_process_batch64_cpu_per_sample_us"] / 1e6 / per_sample
    f["cpu_per_sample_budget_at_aim_us"] = cores / (aim * limit) * 1e6
    f["cpu_per_sample_left_beside_inference_at_aim_us"] = f["cpu_per_sample_budget_at_aim_us"] - f["in_process_batch64_cpu_per_sample_us"]
    c = f.get("concurrent_batching", {})
    if "cpu_ceiling_share_of_limit" in c:
        f["aim_reachable_by_cpu_on_all_cores"] = c["cpu_ceiling_share_of_limit"] >= aim
        f["aim_reachable_by_cpu_on_equal_cores"] = c["cpu_share_of_limit_on_equal_cores"] >= aim


def print_cpu_accounting(f: dict[str, Any], cores: int) -> None:
    print(f"    CPU per sample (µs, /proc user+system over the load window), {cores} cores shared by client and server:")
    print(f"      in-process b64 limit: {f['in_process_batch64_cpu_per_sample_us']:.0f} (its own process, ONNX Runtime threads included; "
          f"{f['in_process_batch64_cpu_per_sample_us'] * f['in_process_batch64_samples_per_s'] / 1e6:.2f} cores busy at the limit)")
    for key, title in (("concurrent_batching", "(c) grpc.aio stub clients, batching"), ("concurrent_no_batching", "(c) grpc.aio stub clients, no batching"),
                       ("kserve_tritonclient", "(d) tritonclient -> ours (KServe)"), ("mlserver_tritonclient", "(d) tritonclient -> MLServer")):
        load = f.get(key)
        if load is None or "cpu_ceiling_samples_per_s" not in load:
            continue
        print(f"      {title:36s} client {load['client_cpu_per_sample_us']:6.0f} + server {load['server_cpu_per_sample_us']:6.0f}"
              f"   cores busy {load['cores_busy']:.2f}   ceiling {load['cpu_ceiling_samples_per_s']:6.0f}/s = {load['cpu_ceiling_share_of_limit']:.2f} of the limit"
              f"   (measured {load['samples_per_s'] / f['in_process_batch64_samples_per_s']:.2f}; "
              f"on as many busy cores as the limit had: {load['cpu_share_of_limit_on_equal_cores']:.2f})")
        if "in_process_cpu_per_sample_at_mean_batch_us" in load:
            inference = load["in_process_cpu_per_sample_at_mean_batch_us"]
            print(f"        of the server's: inference at its mean batch {load['mean_batch']:.1f} ~{inference:.0f} (in process, same batch), "
                  f"the rest (gRPC and the per-request path) ~{load['server_cpu_per_sample_us'] - inference:.0f}")
        if "server_busiest_thread" in load:
            print(f"        client process busy {load['client_busy_share']:.2f} of the wall time; the service's busiest thread "
                  f"({load['server_busiest_thread']}) {load['server_busiest_thread_busy_share']:.2f}")
    print(f"      0.8 of the limit on {cores} cores allows {f['cpu_per_sample_budget_at_aim_us']:.0f} µs of CPU per sample in all; batch-64 inference takes "
          f"{f['in_process_batch64_cpu_per_sample_us']:.0f}, leaving {f['cpu_per_sample_left_beside_inference_at_aim_us']:.0f} for the client and the per-request path")
    if "aim_reachable_by_cpu_on_all_cores" in f:
        c = f["concurrent_batching"]
        yes = {True: "reachable", False: "NOT reachable"}
        print(f"      (c) with batching, 0.8 of the limit by CPU: {yes[f['aim_reachable_by_cpu_on_all_cores']]} with all {cores} cores kept busy "
              f"(client + server {c['client_cpu_per_sample_us'] + c['server_cpu_per_sample_us']:.0f} µs a sample against {f['cpu_per_sample_budget_at_aim_us']:.0f}; "
              f"the limit itself kept {f['in_process_batch64_cpu_per_sample_us'] * f['in_process_batch64_samples_per_s'] / 1e6:.2f} cores busy), "
              f"{yes[f['aim_reachable_by_cpu_on_equal_cores']]} on as many busy cores as the limit had")


def triton_load(python: Path, address: str, model: str, sig: GeneratorSignature, clients: int, seconds: float, server_pid: int) -> dict[str, float]:
    """The tritonclient load; it reads its own CPU and that of ``server_pid``'s process tree over its window."""
    script = ROOT / "bench" / "sampling_kserve" / "triton_load.py"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(
        [str(python), str(script), address, model, str(clients), str(seconds), str(sig.latent_dim), str(server_pid)],
        capture_output=True, text=True, check=True, env=env, timeout=600,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


MLSERVER_PIDS: dict[str, int] = {}
"""address -> pid of the ``mlserver start`` process serving it (its CPU: that process and all under it)."""


@contextlib.contextmanager
def mlserver(python: Path, work: Path, onnx: dict[str, bytes], batch_time: float = 0.0005) -> Iterator[str]:
    """MLServer 1.7 serving each ONNX file with the runtime of bench/sampling_kserve/mlserver_onnx.py,
    adaptive batching up to 64 requests within ``batch_time`` seconds."""
    import shutil

    from simulacra_client.api.inference import grpc_service_pb2 as kserve
    from simulacra_client.api.inference import grpc_service_pb2_grpc as kserve_grpc

    work.mkdir(parents=True, exist_ok=True)
    ports = [_free_port() for _ in range(3)]
    (work / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": ports[0], "grpc_port": ports[1], "metrics_port": ports[2], "parallel_workers": 0,
    }))
    for model, data in onnx.items():
        folder = work / model
        folder.mkdir(parents=True)
        (folder / "generator.onnx").write_bytes(data)
        shutil.copy(ROOT / "bench" / "sampling_kserve" / "mlserver_onnx.py", folder / "mlserver_onnx.py")
        (folder / "model-settings.json").write_text(json.dumps({
            "name": model, "implementation": "mlserver_onnx.OnnxGenerator", "parameters": {"uri": str(folder / "generator.onnx")},
            "max_batch_size": 64, "max_batch_time": batch_time,
        }))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    log = open(work / "mlserver.log", "w")
    process = subprocess.Popen([str(python.parent / "mlserver"), "start", str(work)], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{ports[1]}"
    MLSERVER_PIDS[address] = process.pid
    try:
        with grpc.insecure_channel(address) as channel:
            stub = kserve_grpc.GRPCInferenceServiceStub(channel)
            deadline = time.monotonic() + 180
            while True:
                try:
                    if all(stub.ModelReady(kserve.ModelReadyRequest(name=m), timeout=2).ready for m in onnx):
                        break
                except grpc.RpcError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"MLServer did not start; see {work / 'mlserver.log'}")
                time.sleep(0.5)
        yield address
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def breakdown_only(data: Path, models: dict[str, GeneratorSignature], onnx: dict[str, bytes], calls: int) -> int:
    """(b) and (e) alone: the unary figure and where its time goes."""
    figures = {}
    with service(data) as address:
        for model, sig in models.items():
            local = in_process_latency(ort_session(onnx[model]), sig, calls)
            remote, cpu = unary_latency(address, model, calls)
            figures[model] = {"unary_p50_us": pct(remote, 0.5) * 1e6, "unary_server_cpu_per_call_us": cpu * 1e6, "in_process_batch1_p50_us": pct(local, 0.5) * 1e6}
    print("\nWhere one unary call goes")
    for model in models:
        f = figures[model]
        f["breakdown"] = breakdown(data, model, {"p50_us": f["unary_p50_us"], "server_cpu_us": f["unary_server_cpu_per_call_us"]}, calls)
        print_breakdown(model, f["breakdown"])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--mlserver", action=argparse.BooleanOptionalAction, default=True, help="(d): tritonclient load on our KServe endpoint and on MLServer")
    parser.add_argument("--mlserver-batch-time", type=float, default=0.0005, help="(d): MLServer's adaptive batching window, seconds")
    parser.add_argument("--breakdown-only", action="store_true", help="only (b) and (e): where one unary call's time goes")
    args = parser.parse_args(argv)
    plan = {
        "stream_samples": 2048 if args.quick else 20_000,
        "unary_calls": 200 if args.quick else 2000,
        "concurrent_clients": 32,
        "concurrent_seconds": 3.0 if args.quick else 15.0,
        "baseline_seconds": 1.0 if args.quick else 5.0,
    }
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1) * 0.5:
        print(f"warning: load average {load:.1f} on {os.cpu_count()} CPUs: other work will skew every figure", file=sys.stderr)
    figures: dict[str, Any] = {
        "quick": args.quick, "plan": plan,
        "mlserver_batch_time_s": args.mlserver_batch_time if args.mlserver else None,
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": load, "python": platform.python_version(), "onnxruntime": ort.__version__},
    }
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        registry = ModelRegistry(LocalObjectStore(data / "objects"))
        models = {"digits": DIGITS, "scenes": SCENES}
        onnx = {}
        for model, sig in models.items():
            onnx[model] = export(sig)
            registry.register_version(model, onnx[model], sig, model_kind="gan")
        if args.breakdown_only:
            return breakdown_only(data, models, onnx, plan["unary_calls"])
        sessions: dict[str, ort.InferenceSession] = {}
        with service(data) as address:
            for model, sig in models.items():
                session = sessions[model] = ort_session(onnx[model])
                limit, limit_cpu = in_process_rate(session, sig, 64, plan["baseline_seconds"])
                local = in_process_latency(session, sig, plan["unary_calls"])
                rate = stream_rate(address, model, plan["stream_samples"])
                remote, remote_cpu = unary_latency(address, model, plan["unary_calls"])
                figures[model] = {
                    "shape": list(sig.sample_shape),
                    "in_process_batch64_samples_per_s": limit,
                    "in_process_batch64_cpu_per_sample_us": limit_cpu * 1e6,
                    "stream_samples_per_s": rate,
                    "ratio_stream_to_in_process": rate / limit,
                    "unary_p50_us": pct(remote, 0.5) * 1e6,
                    "unary_p99_us": pct(remote, 0.99) * 1e6,
                    "in_process_batch1_p50_us": pct(local, 0.5) * 1e6,
                    "in_process_batch1_p99_us": pct(local, 0.99) * 1e6,
                    "in_process_batch1_samples_per_s": len(local) / sum(local),
                    "unary_overhead_p50_us": (pct(remote, 0.5) - pct(local, 0.5)) * 1e6,
                    "unary_server_cpu_per_call_us": remote_cpu * 1e6,
                }
                before = kserve_counters(address, model)
                load = concurrent(address, model, plan["concurrent_clients"], plan["concurrent_seconds"])
                figures[model]["concurrent_batching"] = with_inference_share(load, before, kserve_counters(address, model))
            if args.mlserver:
                python = kserve_python()
                for model, sig in models.items():
                    before = kserve_counters(address, model)
                    load = triton_load(python, address, model, sig, plan["concurrent_clients"], plan["concurrent_seconds"], SERVICE_PIDS[address])
                    figures[model]["kserve_tritonclient"] = with_inference_share(load, before, kserve_counters(address, model))
        if args.mlserver:
            with mlserver(python, data / "mlserver", onnx, args.mlserver_batch_time) as address:
                for model, sig in models.items():
                    f = figures[model]
                    before = mlserver_counters(data / "mlserver", model)
                    load = triton_load(python, address, model, sig, plan["concurrent_clients"], plan["concurrent_seconds"], MLSERVER_PIDS[address])
                    time.sleep(0.3)  # the runtime writes its counters at most every 0.2 s
                    f["mlserver_tritonclient"] = with_inference_share(load, before, mlserver_counters(data / "mlserver", model))
                    limit = f["in_process_batch64_samples_per_s"]
                    f["kserve_share_of_limit"] = f["kserve_tritonclient"]["samples_per_s"] / limit
                    f["mlserver_share_of_limit"] = f["mlserver_tritonclient"]["samples_per_s"] / limit
                    f["largest_possible_ratio_to_mlserver"] = limit / f["mlserver_tritonclient"]["samples_per_s"]
                    f["ratio_kserve_to_mlserver_throughput"] = f["kserve_tritonclient"]["samples_per_s"] / f["mlserver_tritonclient"]["samples_per_s"]
                    f["ratio_kserve_to_mlserver_p99"] = f["kserve_tritonclient"]["p99_ms"] / f["mlserver_tritonclient"]["p99_ms"]
        with service(data, SIMULACRA_SAMPLING_DYNAMIC_BATCHING="false") as address:
            for model in models:
                result = concurrent(address, model, plan["concurrent_clients"], plan["concurrent_seconds"])
                figures[model]["concurrent_no_batching"] = result
                f = figures[model]
                f["ratio_batching_to_no_batching"] = f["concurrent_batching"]["samples_per_s"] / result["samples_per_s"]
                f["ratio_batching_to_limit"] = f["concurrent_batching"]["samples_per_s"] / f["in_process_batch64_samples_per_s"]
        for model in models:
            f = figures[model]
            for key in ("concurrent_batching", "kserve_tritonclient", "mlserver_tritonclient"):
                load = f.get(key)
                if load and load.get("mean_batch"):
                    batch = max(1, round(load["mean_batch"]))
                    load["in_process_cpu_per_sample_at_mean_batch_us"] = in_process_rate(sessions[model], models[model], batch, plan["baseline_seconds"])[1] * 1e6
            cpu_accounting(f, os.cpu_count() or 1)
            f["breakdown"] = breakdown(data, model, {"p50_us": f["unary_p50_us"], "server_cpu_us": f["unary_server_cpu_per_call_us"]}, plan["unary_calls"])
    figures["machine"]["load_average_at_end"] = os.getloadavg()[0]
    print(f"\nSummary (samples/s; latencies of one-sample calls); load average {figures['machine']['load_average_at_start']:.1f} at start, "
          f"{figures['machine']['load_average_at_end']:.1f} at end")
    for model in ("digits", "scenes"):
        f = figures[model]
        print(f"  {model} {f['shape']}:")
        print(f"    stream uint8 b64 {f['stream_samples_per_s']:10.0f}/s   in-process b64 {f['in_process_batch64_samples_per_s']:10.0f}/s   ratio {f['ratio_stream_to_in_process']:.2f}   (in-process b1, one call after another: {f['in_process_batch1_samples_per_s']:.0f}/s)")
        print(f"    unary b1 p50 {f['unary_p50_us']:8.0f} us  p99 {f['unary_p99_us']:8.0f} us   in-process p50 {f['in_process_batch1_p50_us']:6.0f} us   overhead p50 {f['unary_overhead_p50_us']:6.0f} us")
        b, nb = f["concurrent_batching"], f["concurrent_no_batching"]
        print(f"    32 clients: batching {b['samples_per_s']:8.0f}/s (p99 {b['p99_ms']:.1f} ms)   no batching {nb['samples_per_s']:8.0f}/s (p99 {nb['p99_ms']:.1f} ms)   ratio {f['ratio_batching_to_no_batching']:.2f}   of the limit {f['ratio_batching_to_limit']:.2f}"
              f"   (batching: inference busy {b['inference_busy_share']:.2f}, mean batch {b['mean_batch']:.1f})")
        if "mlserver_tritonclient" in f:
            k, m = f["kserve_tritonclient"], f["mlserver_tritonclient"]
            print(f"    tritonclient, 32 clients: ours (KServe) {k['samples_per_s']:8.0f}/s (p99 {k['p99_ms']:.1f} ms)   MLServer 1.7 {m['samples_per_s']:8.0f}/s (p99 {m['p99_ms']:.1f} ms)   throughput x{f['ratio_kserve_to_mlserver_throughput']:.2f}   p99 x{f['ratio_kserve_to_mlserver_p99']:.2f}")
            print(f"      of the in-process b64 limit: ours {f['kserve_share_of_limit']:.2f}, MLServer {f['mlserver_share_of_limit']:.2f} (so at most x{f['largest_possible_ratio_to_mlserver']:.2f} is possible)   "
                  f"inference busy: ours {k['inference_busy_share']:.2f} (mean batch {k['mean_batch']:.1f}), MLServer {m['inference_busy_share']:.2f} (mean batch {m['mean_batch']:.1f})")
        print_cpu_accounting(f, os.cpu_count() or 1)
    print("\nWhere one unary call goes (e)")
    for model in models:
        print_breakdown(model, figures[model]["breakdown"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
