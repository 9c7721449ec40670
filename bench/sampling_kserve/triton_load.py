"""The 32-client load of bench/sampling.py, written with tritonclient (run with the python of a
virtual environment that has tritonclient[grpc]: it needs protobuf < 7).

argv: address model clients seconds latent_dim [server_pid] -> prints one JSON line
{"samples_per_s", "p50_ms", "p99_ms", "requests", "client_cpu_per_sample_us"[, "server_cpu_per_sample_us"],
"cores_busy"}. Each client sends raw tensors z [1, latent_dim] FP32 and labels [1] INT64 (the ONNX
signature) and waits for the answer before the next request. CPU: this process, and the process
tree of server_pid, user + system seconds from /proc over the load window, per sample.
"""

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as tga
from tritonclient.grpc import InferInput


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    out = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            out += tree(child)
    return out


def tree_cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in tree(pid):
        try:
            total += cpu_seconds(p)
        except OSError:
            pass
    return total


async def main(address: str, model: str, clients: int, seconds: float, latent_dim: int, server_pid: int | None) -> None:
    client = tga.InferenceServerClient(url=address)
    z = np.random.default_rng(0).standard_normal((1, latent_dim)).astype(np.float32)
    labels = np.zeros(1, np.int64)

    def inputs():
        made = [InferInput("z", [1, latent_dim], "FP32"), InferInput("labels", [1], "INT64")]
        made[0].set_data_from_numpy(z)
        made[1].set_data_from_numpy(labels)
        return made

    for _ in range(5):
        await client.infer(model, inputs())
    latencies = []
    stop = time.perf_counter() + seconds

    async def one() -> int:
        done = 0
        while time.perf_counter() < stop:
            started = time.perf_counter()
            result = await client.infer(model, inputs())
            result.as_numpy("samples")
            latencies.append(time.perf_counter() - started)
            done += 1
        return done

    started, client_cpu = time.perf_counter(), cpu_seconds(os.getpid())
    server_cpu = tree_cpu_seconds(server_pid) if server_pid else 0.0
    total = sum(await asyncio.gather(*(one() for _ in range(clients))))
    elapsed = time.perf_counter() - started
    client_cpu = cpu_seconds(os.getpid()) - client_cpu
    server_cpu = tree_cpu_seconds(server_pid) - server_cpu if server_pid else 0.0
    await client.close()
    ordered = sorted(latencies)
    figures = {
        "samples_per_s": total / elapsed, "requests": total,
        "p50_ms": ordered[len(ordered) // 2] * 1e3, "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e3,
        "client_cpu_per_sample_us": client_cpu / total * 1e6, "cores_busy": (client_cpu + server_cpu) / elapsed,
    }
    if server_pid:
        figures["server_cpu_per_sample_us"] = server_cpu / total * 1e6
    print(json.dumps(figures))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]) if len(sys.argv) > 6 else None))
