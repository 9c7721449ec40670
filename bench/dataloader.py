#!/usr/bin/env python3
"""Benchmark of SyntheticDataset: is a DataLoader over the sampling stream the bottleneck of training?

    python bench/dataloader.py            # 20,000 samples per figure (about a minute on 2 cores)
    python bench/dataloader.py --quick    # 2,000 samples

It exports a small conditional 28x28 generator (linear + two transposed
convolutions, the shape of the demo's digits) to ONNX, registers it in a
temporary registry, starts `simulacra serve sampling` in its own process and
measures, in one run, on the same samples:

  (a) a DataLoader with 2 workers over ``SyntheticDataset`` (through ``ResumableLoader``,
      batch 64, float images in [0, 1]): samples/s delivered to the training loop;
  (b) the same with 0 workers (the main process reads the stream itself);
  (c) a DataLoader over an in-memory ``TensorDataset`` of exactly those samples (batch 64,
      shuffled): the ceiling a loader can reach;
  (d) a training step of a small CNN (the demo's classifier) at batch 64, on in-memory
      batches: samples/s the model consumes. The loader is not the bottleneck when (a) >= (d).

Rates are steady state (from the first batch on); the time to the first batch (worker
start-up: forkserver processes import torch and open their channels) is printed apart.
Ratios printed: (a)/(c) and (a)/(d). Figures also go to bench/results/dataloader.json (--json).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from simulacra_client.channel import check_health, open_channel  # noqa: E402
from simulacra_client.torch_data import ResumableLoader, SyntheticDataset  # noqa: E402
from simulacra_services.cli.demo_classifier import SmallCNN  # noqa: E402
from simulacra_services.core.registry import GeneratorSignature, ModelRegistry  # noqa: E402
from simulacra_services.core.storage.local import LocalObjectStore  # noqa: E402

SIGNATURE = GeneratorSignature(
    latent_dim=32, channels=1, height=28, width=28, num_classes=10,
    class_names=tuple(str(d) for d in range(10)), category_ids=tuple(range(1, 11)),
)
BATCH = 64


def export_generator() -> bytes:
    torch.manual_seed(0)

    class Generator(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 16)
            self.fc = nn.Linear(32 + 16, 64 * 7 * 7)
            self.up = nn.Sequential(nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(32, 1, 4, 2, 1), nn.Tanh())

        def forward(self, z, labels):  # noqa: ANN001, ANN201
            h = torch.relu(self.fc(torch.cat([z, self.embed(labels)], 1))).view(-1, 64, 7, 7)
            return self.up(h)

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Generator().eval(), (torch.zeros(2, 32), torch.zeros(2, dtype=torch.long)), buffer, input_names=["z", "labels"],
            output_names=["samples"], dynamic_axes={n: {0: "n"} for n in ("z", "labels", "samples")}, opset_version=17, dynamo=False,
        )
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sampling(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMULACRA_")}
    env.update(SIMULACRA_DATA_DIR=str(data_dir), SIMULACRA_SAMPLING_PORT=str(port), SIMULACRA_SAMPLING_METRICS_PORT="0", SIMULACRA_LOG_LEVEL="WARNING")
    process = subprocess.Popen([sys.executable, "-m", "simulacra_services.cli.main", "serve", "sampling"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with open_channel(address) as channel:
            try:
                if check_health(channel, timeout=1).name == "SERVING":
                    return process, address
            except Exception:  # noqa: BLE001 - not up yet
                pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("the sampling service did not start")


def rate(loader, count: int) -> tuple[float, float]:  # noqa: ANN001
    """Samples/s after the first batch (steady state) and seconds to the first batch (worker start-up)."""
    started, seen, first = time.perf_counter(), 0, 0.0
    for images, _labels in loader:
        if not first:
            first = time.perf_counter()
        else:
            seen += len(images)
        if seen >= count:
            break
    return seen / (time.perf_counter() - first), first - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "dataloader.json"))
    args = parser.parse_args()
    count = 2_000 if args.quick else 20_000
    if os.getloadavg()[0] > 1.0:
        print(f"warning: load average {os.getloadavg()[0]:.1f} at the start: other work skews these figures", file=sys.stderr)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="simulacra-bench-") as tmp:
        data_dir = Path(tmp)
        ModelRegistry(LocalObjectStore(data_dir / "objects")).register_version("bench-digits", export_generator(), SIGNATURE, model_kind="gan")
        process, address = start_sampling(data_dir)
        try:
            def dataset() -> SyntheticDataset:
                return SyntheticDataset(address, "bench-digits", seed=1, num_samples=count)

            rate(ResumableLoader(dataset(), batch_size=BATCH), BATCH * 4)  # warm-up: the session loads, caches fill
            two_workers, two_workers_start = rate(ResumableLoader(dataset(), batch_size=BATCH, num_workers=2), count)
            no_workers, _ = rate(ResumableLoader(dataset(), batch_size=BATCH), count)
            images, labels = [], []
            for batch_images, batch_labels in ResumableLoader(dataset(), batch_size=BATCH):
                images.append(batch_images)
                labels.append(batch_labels)
            tensors = TensorDataset(torch.cat(images), torch.cat(labels))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
    in_memory, _ = rate(DataLoader(tensors, batch_size=BATCH, shuffle=True), count)
    model = SmallCNN()
    model(tensors.tensors[0][:1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    started, seen = time.perf_counter(), 0
    for batch_images, batch_labels in DataLoader(tensors, batch_size=BATCH, shuffle=True):
        optimizer.zero_grad()
        loss_fn(model(batch_images), batch_labels).backward()
        optimizer.step()
        seen += len(batch_images)
        if seen >= min(count, 6_400):
            break
    training = seen / (time.perf_counter() - started)

    figures = {
        "quick": args.quick, "samples": count, "batch_size": BATCH, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "synthetic_2_workers_per_s": two_workers, "synthetic_2_workers_first_batch_s": two_workers_start, "synthetic_0_workers_per_s": no_workers,
        "in_memory_per_s": in_memory, "cnn_training_per_s": training,
        "ratio_2_workers_to_in_memory": two_workers / in_memory, "ratio_2_workers_to_training": two_workers / training,
    }
    print(f"SyntheticDataset, 2 workers (ResumableLoader, batch {BATCH}): {two_workers:10.0f} samples/s (first batch after {two_workers_start:.1f} s: worker start-up)")
    print(f"SyntheticDataset, 0 workers:                            {no_workers:10.0f} samples/s")
    print(f"in-memory TensorDataset, same samples:                  {in_memory:10.0f} samples/s")
    print(f"small CNN training step (batch {BATCH}, 1 thread):         {training:10.0f} samples/s")
    print(f"ratio 2 workers / in-memory: {figures['ratio_2_workers_to_in_memory']:.3f}")
    print(f"ratio 2 workers / CNN training: {figures['ratio_2_workers_to_training']:.2f} (>= 1: the loader is not the bottleneck)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
