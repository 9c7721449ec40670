"""The 32-client load of bench/sampling.py, written with tritonclient (run with the python of a
virtual environment that has tritonclient[grpc]: it needs protobuf < 7).

argv: address model clients seconds latent_dim -> prints one JSON line
{"samples_per_s", "p50_ms", "p99_ms", "requests"}. Each client sends raw tensors z [1, latent_dim]
FP32 and labels [1] INT64 (the ONNX signature) and waits for the answer before the next request.
"""

import asyncio
import json
import sys
import time

import numpy as np
import tritonclient.grpc.aio as tga
from tritonclient.grpc import InferInput


async def main(address: str, model: str, clients: int, seconds: float, latent_dim: int) -> None:
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

    started = time.perf_counter()
    total = sum(await asyncio.gather(*(one() for _ in range(clients))))
    elapsed = time.perf_counter() - started
    await client.close()
    ordered = sorted(latencies)
    print(json.dumps({
        "samples_per_s": total / elapsed, "requests": total,
        "p50_ms": ordered[len(ordered) // 2] * 1e3, "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e3,
    }))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])))
