#!/usr/bin/env python3
"""Benchmark of the augmentation engine and service, against Albumentations 2.0.8 and Kornia 0.9.

    python bench/augmentation.py            # full run (a few minutes on 2 cores)
    python bench/augmentation.py --quick    # fewer images and repeats (well under a minute)

Inputs: scikit-image's sample photographs (astronaut, chelsea, coffee, rocket,
immunohistochemistry, hubble_deep_field, colorwheel, retina, and the grey ones
as RGB), resized to 256x256, each with 5 seeded random boxes. Pipeline, the
same in the three libraries: RandomResizedCrop(224, scale 0.5-1) +
HorizontalFlip(0.5) + Affine(rotate +-15, scale 0.9-1.1, translate +-10%) +
ColorJitter(0.2, 0.2, 0.2, 0.05). Every library runs in one thread
(``cv2.setNumThreads(1)``, ``torch.set_num_threads(1)``); Kornia gets batches
of 32 float tensors (the uint8 <-> float conversion is timed too).

Figures, all measured in the same run:
  (a) images/s (with boxes) of our engine, of Albumentations and of Kornia, and the ratios;
  (b) our engine fused (one resampling) vs op by op (a resampling per geometric op):
      speed, and sharpness as the PSNR of rotate + scale + rotate + translate against the ideal
      (one Lanczos resampling of the original through the composed matrix);
  (c) the gRPC stream (SDK, a real server in its own process on 127.0.0.1, one worker thread, batches of 16)
      against the engine in process, one thread, with the CPU each side spends per batch, the same for a
      pipeline that does nothing (the transport's cost), the ceiling that CPU allows; and the same
      through a server whose stream engine runs in one child process (engine_processes=1);
  (d) a dataset job over a 5000-item version (200 with --quick) of 64x64 photographs with 2 boxes each:
      `simulacra serve annotation` and `simulacra serve augmentation` in their own processes, items/s
      from CreateAugmentDatasetJob to SUCCEEDED (reading, augmenting, PNG encoding, uploading, committing).
The figures go to stdout and, with --json, to a file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulacra_client.api.annotation.v1 import annotation_pb2  # noqa: E402
from simulacra_client.augmentation import AugmentationClient, ItemInput  # noqa: E402
from simulacra_services.annotation.domain.model import Annotation, Box  # noqa: E402
from simulacra_services.augmentation.engine import Augmenter, Item, parse_spec  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "colorwheel", "retina", "camera", "moon", "coins", "clock")
OURS = {
    "ops": [
        {"random_resized_crop": {"height": 224, "width": 224, "scale": {"min": 0.5, "max": 1.0}}},
        {"horizontal_flip": {}, "probability": 0.5},
        {"affine": {"rotate_degrees": {"min": -15, "max": 15}, "scale": {"min": 0.9, "max": 1.1}, "translate_x": {"min": -0.1, "max": 0.1}, "translate_y": {"min": -0.1, "max": 0.1}}},
        {"color_jitter": {"brightness": {"min": 0.8, "max": 1.2}, "contrast": {"min": 0.8, "max": 1.2}, "saturation": {"min": 0.8, "max": 1.2}, "hue": {"min": -0.05, "max": 0.05}}},
    ]
}


def photographs(count: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    import skimage.data

    base = []
    for name in PHOTOS:
        image = getattr(skimage.data, name)()
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        base.append(cv2.resize(image[:, :, :3], (256, 256), interpolation=cv2.INTER_AREA))
    rng = np.random.default_rng(0)
    images, boxes = [], []
    for index in range(count):
        images.append(base[index % len(base)])
        xy = rng.uniform(0, 200, size=(5, 2))
        wh = rng.uniform(16, 56, size=(5, 2))
        boxes.append(np.concatenate([xy, np.minimum(xy + wh, 256)], axis=1))
    return images, boxes


def interleaved(runs: dict[str, Callable[[], int]], repeats: int) -> dict[str, float]:
    """Items per second of each run, the best of ``repeats`` rounds in which every run takes its
    turn: on a shared machine, load that comes and goes then hits every contender alike."""
    for run in runs.values():
        run()
    best = dict.fromkeys(runs, 0.0)
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            items = run()
            best[name] = max(best[name], items / (time.perf_counter() - start))
    return best


def ours_items(images: list[np.ndarray], boxes: list[np.ndarray]) -> list[Item]:
    return [
        Item(image, tuple(Annotation(Box(b[0], b[1], b[2] - b[0], b[3] - b[1]), 1, id=str(i)) for i, b in enumerate(bs)), key=f"photo/{n}")
        for n, (image, bs) in enumerate(zip(images, boxes))
    ]


def engine_run(images, boxes, fuse: bool = True) -> Callable[[], int]:  # noqa: ANN001
    augmenter = Augmenter(parse_spec(OURS), fuse=fuse)
    items = ours_items(images, boxes)

    def run() -> int:
        for index, item in enumerate(items):
            augmenter.run(item, seed=index)
        return len(items)

    return run


def albumentations_run(images, boxes) -> tuple[Callable[[], int], str]:  # noqa: ANN001
    import albumentations as A

    pipeline = A.Compose(
        [
            A.RandomResizedCrop((224, 224), scale=(0.5, 1.0)),
            A.HorizontalFlip(p=0.5),
            A.Affine(rotate=(-15, 15), scale=(0.9, 1.1), translate_percent=(-0.1, 0.1), p=1.0),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05, p=1.0),
        ],
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"]),
        seed=0,
    )
    labels = [1] * 5

    def run() -> int:
        for image, bs in zip(images, boxes):
            pipeline(image=image, bboxes=bs, labels=labels)
        return len(images)

    return run, A.__version__


def kornia_run(images, boxes, batch: int = 32) -> tuple[Callable[[], int], str]:  # noqa: ANN001
    import kornia
    import kornia.augmentation as K
    import torch

    torch.set_num_threads(1)
    pipeline = K.AugmentationSequential(
        K.RandomResizedCrop((224, 224), scale=(0.5, 1.0)),
        K.RandomHorizontalFlip(p=0.5),
        K.RandomAffine(degrees=15, translate=(0.1, 0.1), scale=(0.9, 1.1), p=1.0),
        K.ColorJitter(0.2, 0.2, 0.2, 0.05, p=1.0),
        data_keys=["input", "bbox_xyxy"],
    )
    stacked = np.stack(images)
    all_boxes = torch.from_numpy(np.stack(boxes).astype(np.float32))

    def run() -> int:
        with torch.no_grad():
            for start in range(0, len(images), batch):
                x = torch.from_numpy(stacked[start : start + batch]).permute(0, 3, 1, 2).float().div_(255.0)
                out, _ = pipeline(x, all_boxes[start : start + batch])
                (out.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return len(images)

    return run, kornia.__version__


def sharpness_psnr(fuse: bool) -> float:
    """PSNR (centre crop) of rotate 10 + scale 1.2 + rotate 5 + translate, against the ideal: one
    Lanczos resampling of the original through the composed matrix."""
    import skimage.data

    image = cv2.resize(skimage.data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    spec = parse_spec(
        {
            "ops": [
                {"rotate": {"angle_degrees": {"min": 10, "max": 10}}},
                {"affine": {"scale": {"min": 1.2, "max": 1.2}}},
                {"rotate": {"angle_degrees": {"min": 5, "max": 5}}},
                {"affine": {"translate_x": {"min": 0.03, "max": 0.03}}},
            ]
        }
    )
    out = Augmenter(spec, fuse=fuse).run(Item(image), 0).image
    from simulacra_services.augmentation.engine.ops.geometric import about_centre, rotation, scaling, translation

    matrix = translation(0.03 * 256, 0) @ about_centre(rotation(5) @ scaling(1.2, 1.2) @ rotation(10), 256, 256)
    ideal = cv2.warpAffine(image, (np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]]) @ matrix @ np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]]))[:2], (256, 256), flags=cv2.INTER_LANCZOS4)
    a, b = ideal[64:192, 64:192].astype(np.float64), out[64:192, 64:192].astype(np.float64)
    return float(10 * np.log10(255.0**2 / max(float(((a - b) ** 2).mean()), 1e-12)))


_SERVER = """
import asyncio, sys, tempfile
from simulacra_services.augmentation.service import DEFINITION
from simulacra_services.core.config import Settings
from simulacra_services.core.server import METRICS_OFF, ServiceServer

async def main():
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(data_dir=data_dir, host="127.0.0.1", log_level="WARNING")
        server = ServiceServer(DEFINITION.with_dependencies(workers=1), settings, port=0, metrics_port=METRICS_OFF)
        await server.start()
        print(server.address, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await server.stop(1.0)

asyncio.run(main())
"""


NOTHING = {"ops": [{"horizontal_flip": {}, "probability": 0.0}]}  # a pipeline that does nothing: the transport's own cost


def cpu_and_faults(pid: int | str = "self") -> tuple[float, int]:
    """(CPU seconds, user + system, of every thread of process ``pid`` so far; its minor page faults)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), int(fields[7])


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (the engine processes a server spawned), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def _tree(pids: list[int]) -> tuple[float, int]:
    both = [cpu_and_faults(pid) for pid in pids]
    return sum(b[0] for b in both), sum(b[1] for b in both)


def measured(run: Callable[[], int], server: int | None, children: list[int]) -> dict[str, float]:
    """One run: wall seconds, this process's CPU seconds and minor faults, and those of the server
    process and of its engine processes (``children``)."""
    servers = [server] if server else []
    client0, server0, child0 = cpu_and_faults(), _tree(servers), _tree(children)
    cpu0, start = time.process_time(), time.perf_counter()
    items = run()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0  # process_time: ns resolution, every thread
    client1, server1, child1 = cpu_and_faults(), _tree(servers), _tree(children)
    return {"items": items, "wall": wall, "client_cpu": cpu, "client_faults": client1[1] - client0[1],
            "server_cpu": server1[0] - server0[0], "server_faults": server1[1] - server0[1],
            "engine_process_cpu": child1[0] - child0[0], "engine_process_faults": child1[1] - child0[1]}


@contextlib.contextmanager
def stream_server(engine_processes: int) -> Iterator[tuple[str, int]]:
    """The bench's augmentation server in its own process: (address, pid)."""
    env = {**os.environ, "OPENCV_FOR_THREADS_NUM": "1", "OMP_NUM_THREADS": "1"}
    script = "import cv2; cv2.setNumThreads(1)\n" + _SERVER.replace("workers=1", f"workers=1, engine_processes={engine_processes}")
    server = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        yield server.stdout.readline().strip(), server.pid
    finally:
        server.stdin.close()
        server.wait(30)


def bench_stream(images, boxes, repeats: int, batch: int = 16) -> dict[str, Any]:  # noqa: ANN001
    """The gRPC stream through a real server in its own process against the engine in process (one
    worker thread each), interleaved round by round, with the CPU time each side spent per batch: the
    server process's (all its threads, from /proc) and this process's (the SDK client, all threads).
    The same through a server whose stream engine runs in one child process (``engine_processes=1``;
    the child's CPU counted apart).

    Rates are the best round's; CPU and page faults per batch the median over rounds."""
    inputs = [
        ItemInput(image, f"photo/{n}", [annotation_pb2.Annotation(id=str(i), category_id=1, box=annotation_pb2.Box(x=b[0], y=b[1], w=b[2] - b[0], h=b[3] - b[1])) for i, b in enumerate(bs)])
        for n, (image, bs) in enumerate(zip(images, boxes))
    ]
    with contextlib.ExitStack() as stack:
        (address, pid), (address_p, pid_p) = stack.enter_context(stream_server(0)), stack.enter_context(stream_server(1))
        client, client_p = stack.enter_context(AugmentationClient(address)), stack.enter_context(AugmentationClient(address_p))

        def streamer(client: AugmentationClient, pipeline: dict) -> Callable[[], int]:
            return lambda: sum(1 for _ in client.stream(inputs, pipeline, seed=1, batch_size=batch))

        runs: dict[str, list[Any]] = {
            "stream": [streamer(client, OURS), pid, []],
            "in_process": [engine_run(images, boxes), None, []],
            "transport": [streamer(client, NOTHING), pid, []],
            "stream_engine_process": [streamer(client_p, OURS), pid_p, []],
            "transport_engine_process": [streamer(client_p, NOTHING), pid_p, []],
        }
        for entry in runs.values():
            entry[0]()
        runs["stream_engine_process"][2] = runs["transport_engine_process"][2] = descendants(pid_p)
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in runs}
        for _ in range(repeats):
            for name, (run, server, children) in runs.items():
                rounds[name].append(measured(run, server, children))
    batches = -(-len(images) // batch)
    out: dict[str, Any] = {}
    for name, found in rounds.items():
        out[name] = {"images_per_s": max(r["items"] / r["wall"] for r in found)}
        for key in ("wall", "client_cpu", "server_cpu", "engine_process_cpu"):
            out[name][f"{key}_ms_per_batch"] = float(np.median([r[key] for r in found])) * 1000 / batches
        for key in ("client_faults", "server_faults", "engine_process_faults"):
            out[name][f"{key}_per_batch"] = float(np.median([r[key] for r in found])) / batches
    stream, engine, split = out["stream"], out["in_process"], out["stream_engine_process"]
    cores = os.cpu_count() or 1
    engine_ms, client_ms, server_ms = engine["client_cpu_ms_per_batch"], stream["client_cpu_ms_per_batch"], stream["server_cpu_ms_per_batch"]
    out["batch_size"] = batch
    out["cores"] = cores
    out["grpc_stream_images_per_s"] = stream["images_per_s"]
    out["in_process_images_per_s"] = engine["images_per_s"]
    out["ratio_stream_to_in_process"] = stream["images_per_s"] / engine["images_per_s"]
    # The stream cannot beat the CPU it needs spread over the cores there are (two processes: at most
    # two cores busy unless the server's worker runs beside its event loop), nor the busiest process
    # on a core of its own if that process runs serially (one GIL).
    out["ceiling_on_these_cores"] = engine_ms / ((client_ms + server_ms) / min(cores, 2))
    out["ceiling_one_core_per_process"] = engine_ms / max(client_ms, server_ms)
    # With the engine in a child process: three processes.
    parts = (split["client_cpu_ms_per_batch"], split["server_cpu_ms_per_batch"], split["engine_process_cpu_ms_per_batch"])
    out["ratio_engine_process_to_in_process"] = split["images_per_s"] / engine["images_per_s"]
    out["engine_process_ceiling_on_these_cores"] = engine_ms / (sum(parts) / min(cores, 3))
    out["engine_process_ceiling_one_core_per_process"] = engine_ms / max(parts)
    return out


JOB_PIPELINE = {"ops": OURS["ops"][1:]}  # the same without the crop: the stored items keep their size


@contextlib.contextmanager
def served(service: str, settings: Any) -> Iterator[Any]:
    """``simulacra serve SERVICE`` in its own process on a free port; its settings (with the address)."""
    from simulacra_client.channel import open_channel, wait_for_ready_health

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = settings.replace(**{f"{service}_port": port, f"{service}_metrics_port": 0})
    log = Path(settings.data_dir) / f"{service}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "simulacra_services.cli.main", "serve", service],
                                   env={**os.environ, **settings.to_env()}, stdout=out, stderr=subprocess.STDOUT)
    try:
        channel = open_channel(settings.address(service))
        try:
            wait_for_ready_health(channel, timeout=90)
        finally:
            channel.close()
        yield settings
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def bench_job(count: int) -> dict[str, float]:
    """A dataset job over a version of ``count`` 64x64 items with 2 boxes each: items/s, create to SUCCEEDED."""
    from simulacra_client.annotation import AnnotationClient
    from simulacra_client.augmentation import AugmentationClient
    from simulacra_services.core.config import Settings

    images, boxes = photographs(count)
    with tempfile.TemporaryDirectory() as root:
        base = Settings(data_dir=root, host="127.0.0.1", log_level="WARNING")
        with served("annotation", base.replace(data_dir=f"{root}/annotation")) as annotation:
            with served("augmentation", base.replace(data_dir=f"{root}/augmentation", annotation_address=annotation.address("annotation"))) as augmentation:
                with AnnotationClient(annotation.address("annotation")) as client:
                    client.create_dataset("photos", categories=[annotation_pb2.Category(category_id=1, display_name="thing")])

                    def items() -> Iterator[annotation_pb2.Item]:
                        for image, bs in zip(images, boxes):
                            small = cv2.resize(image, (64, 64), interpolation=cv2.INTER_AREA)
                            png = cv2.imencode(".png", cv2.cvtColor(small, cv2.COLOR_RGB2BGR))[1].tobytes()
                            yield annotation_pb2.Item(image=annotation_pb2.Image(data=png), annotations=[
                                annotation_pb2.Annotation(category_id=1, box=annotation_pb2.Box(x=b[0] / 4, y=b[1] / 4, w=(b[2] - b[0]) / 4, h=(b[3] - b[1]) / 4))
                                for b in bs[:2]])

                    client.upload_items("photos", items(), batch_size=256)
                    version = client.commit("photos").version.name
                with AugmentationClient(augmentation.address("augmentation"), timeout=600) as augment:
                    start = time.perf_counter()
                    job = augment.create_dataset_job(version, JOB_PIPELINE, copies=1, seed=1, into="photos-augmented")
                    done = augment.wait_dataset_job(job.name)
                    elapsed = time.perf_counter() - start
    return {"items": count, "items_written": done.items_written, "seconds": elapsed, "items_per_s": done.items_written / elapsed}


def print_stream(st: dict[str, Any]) -> None:
    s, e, n = st["stream"], st["in_process"], st["transport"]
    sp, nothing = st["stream_engine_process"], st["transport_engine_process"]
    print(f"  gRPC stream (SDK, 1 worker) {st['grpc_stream_images_per_s']:8.0f} images/s vs in process {st['in_process_images_per_s']:.0f}: ratio {st['ratio_stream_to_in_process']:.2f}")
    print(f"    CPU ms per batch of {st['batch_size']} (median over rounds; minor page faults in brackets):")
    print(f"      in process (engine)           {e['client_cpu_ms_per_batch']:6.2f}   wall {e['wall_ms_per_batch']:6.2f}")
    print(f"      stream: server {s['server_cpu_ms_per_batch']:6.2f} [{s['server_faults_per_batch']:5.0f}]  client {s['client_cpu_ms_per_batch']:6.2f} [{s['client_faults_per_batch']:5.0f}]  wall {s['wall_ms_per_batch']:6.2f}")
    print(f"      do-nothing pipeline: server {n['server_cpu_ms_per_batch']:6.2f} [{n['server_faults_per_batch']:5.0f}]  client {n['client_cpu_ms_per_batch']:6.2f} [{n['client_faults_per_batch']:5.0f}]  wall {n['wall_ms_per_batch']:6.2f} ({n['images_per_s']:.0f} images/s)")
    print(f"    ceiling from CPU: {st['ceiling_on_these_cores']:.2f} of in process on {min(st['cores'], 2)} cores (engine / ((server + client) / cores)), "
          f"{st['ceiling_one_core_per_process']:.2f} with a core per process (engine / busiest process); measured {st['ratio_stream_to_in_process']:.2f}")
    print(f"  gRPC stream, engine in a child process (engine_processes=1) {sp['images_per_s']:6.0f} images/s: ratio {st['ratio_engine_process_to_in_process']:.2f}")
    print(f"      stream: server {sp['server_cpu_ms_per_batch']:6.2f}  engine process {sp['engine_process_cpu_ms_per_batch']:6.2f}  client {sp['client_cpu_ms_per_batch']:6.2f}  wall {sp['wall_ms_per_batch']:6.2f}")
    print(f"      do-nothing pipeline: server {nothing['server_cpu_ms_per_batch']:6.2f}  engine process {nothing['engine_process_cpu_ms_per_batch']:6.2f}  client {nothing['client_cpu_ms_per_batch']:6.2f}  wall {nothing['wall_ms_per_batch']:6.2f}")
    print(f"    ceiling from CPU: {st['engine_process_ceiling_on_these_cores']:.2f} on {min(st['cores'], 3)} cores (engine / ((server + engine process + client) / cores)), "
          f"{st['engine_process_ceiling_one_core_per_process']:.2f} with a core per process; measured {st['ratio_engine_process_to_in_process']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and repeats")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--stream-only", action="store_true", help="only the gRPC stream against in process, with its CPU accounting")
    parser.add_argument("--stream-batch", type=int, default=16, help="items per stream request (default 16)")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    count, repeats = (48, 3) if args.quick else (480, 5)
    images, boxes = photographs(count)
    figures: dict = {"quick": args.quick, "images": count, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
                     "load_at_start": os.getloadavg()[0]}
    if args.stream_only:
        figures["stream"] = bench_stream(images, boxes, repeats, args.stream_batch)
        figures["load_at_end"] = os.getloadavg()[0]
        print(f"Augmentation stream benchmark: {count} photographs 256x256, 5 boxes each (load {figures['load_at_start']:.2f} -> {figures['load_at_end']:.2f})")
        print_stream(figures["stream"])
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
        return

    album, a_version = albumentations_run(images, boxes)
    korn, k_version = kornia_run(images, boxes)
    found = interleaved({"ours": engine_run(images, boxes), "op_by_op": engine_run(images, boxes, fuse=False), "albumentations": album, "kornia": korn}, repeats)
    ours, op_by_op, albumentations, kornia = found["ours"], found["op_by_op"], found["albumentations"], found["kornia"]
    figures["one_thread"] = {
        "ours_images_per_s": ours,
        "ours_op_by_op_images_per_s": op_by_op,
        "albumentations_images_per_s": albumentations,
        "albumentations_version": a_version,
        "kornia_images_per_s": kornia,
        "kornia_version": k_version,
        "ratio_to_albumentations": ours / albumentations,
        "ratio_to_kornia": ours / kornia,
        "ratio_fused_to_op_by_op": ours / op_by_op,
    }
    figures["sharpness"] = {"fused_psnr_db": sharpness_psnr(True), "op_by_op_psnr_db": sharpness_psnr(False)}
    figures["stream"] = bench_stream(images, boxes, repeats, args.stream_batch)

    figures["job"] = bench_job(200 if args.quick else 5000)
    figures["load_at_end"] = os.getloadavg()[0]
    t, s, st = figures["one_thread"], figures["sharpness"], figures["stream"]
    print(f"Augmentation benchmark: {count} scikit-image photographs 256x256, 5 boxes each, one thread ({figures['machine']}; load {figures['load_at_start']:.2f} -> {figures['load_at_end']:.2f})")
    print("  pipeline: RandomResizedCrop(224) + HorizontalFlip + Affine + ColorJitter")
    print(f"  ours (fused)            {t['ours_images_per_s']:8.0f} images/s")
    print(f"  ours (op by op)         {t['ours_op_by_op_images_per_s']:8.0f} images/s   fused/op-by-op ratio {t['ratio_fused_to_op_by_op']:.2f}")
    print(f"  Albumentations {a_version:8s} {t['albumentations_images_per_s']:8.0f} images/s   ours/albumentations ratio {t['ratio_to_albumentations']:.2f}")
    print(f"  Kornia {k_version:16s} {t['kornia_images_per_s']:8.0f} images/s   ours/kornia ratio {t['ratio_to_kornia']:.2f}")
    print(f"  sharpness (PSNR against one Lanczos resampling): fused {s['fused_psnr_db']:.1f} dB, op by op {s['op_by_op_psnr_db']:.1f} dB")
    print_stream(st)
    j = figures["job"]
    print(f"  dataset job: {j['items']} items of 64x64 (2 boxes each) augmented and committed in {j['seconds']:.1f} s: {j['items_per_s']:.0f} items/s")
    print("Summary: " + ", ".join(f"{k}={v:.2f}" for k, v in (("ours/albumentations", t["ratio_to_albumentations"]), ("ours/kornia", t["ratio_to_kornia"]), ("stream/in-process", st["ratio_stream_to_in_process"]))))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
