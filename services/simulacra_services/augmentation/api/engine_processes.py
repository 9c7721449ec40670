"""AugmentStream's engine in child processes, off the server's GIL.

Setting ``SIMULACRA_AUGMENTATION_ENGINE_PROCESSES`` (default 0: the engine runs
on the server's worker threads). A server process spends, per batch of 16
photographs, ~5 ms of CPU on gRPC, asyncio and conversions next to the
engine's ~7 ms, all under one GIL, so one stream cannot go faster than their
sum (docs/augmentation.md, section 10). With N > 0, N child processes do what
a worker thread does for a stream request (parse it, convert and check the
items, augment them, encode the response) with the same functions, so the
bytes are the same, while the server process only moves messages.

Each child is started with ``spawn`` (the server runs grpc's threads; forking
it is unsafe) and answers one request at a time over a pipe: a small pickled
header (the pipeline and categories, pickled once per stream and cached in the
child by their hash; seed; start position), then the request's bytes as they
came off the wire (``send_bytes``: the pixels are not pickled); the answer is
the response's bytes, or an error as data (status class, reason, message,
metadata) raised again in the server. One server thread per child does the
blocking pipe I/O, which releases the GIL.

A child that dies fails the request it had with UNAVAILABLE
``ENGINE_PROCESS_EXITED`` and is replaced for the next one.
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import pickle
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from google.protobuf.message import DecodeError

from simulacra_client.api.augmentation.v1 import augmentation_service_pb2 as pb
from simulacra_client.wire_format import read_varint
from simulacra_services.augmentation.api import convert
from simulacra_services.augmentation.domain.batches import planned, run_planned
from simulacra_services.augmentation.engine import Augmenter
from simulacra_services.core import errors
from simulacra_services.core.heap import keep_large_blocks

_ITEMS_NUMBER = pb.AugmentStreamRequest.DESCRIPTOR.fields_by_name["items"].number


def stream_items(data: bytes) -> int:
    """How many ``items`` a serialized ``AugmentStreamRequest`` holds (-1 when its fields do not parse)."""
    count, index, end = 0, 0, len(data)
    try:
        while index < end:
            key, index = read_varint(data, index)
            wire_type = key & 7
            if wire_type == 2:
                length, index = read_varint(data, index)
                index += length
                count += key >> 3 == _ITEMS_NUMBER
            elif wire_type == 0:
                index = read_varint(data, index)[1]
            elif wire_type in (1, 5):
                index += 8 if wire_type == 1 else 4
            else:
                return -1
    except (IndexError, ValueError):
        return -1
    return count if index == end else -1


def undecodable() -> errors.SimulacraError:
    return errors.InvalidArgument(
        "UNDECODABLE_REQUEST",
        "the request message could not be parsed as the method's request type (a client built from another contract, or corrupted bytes)",
        {"problem": "DecodeError"},
    )


def config_again() -> errors.SimulacraError:
    return errors.InvalidArgument("CONFIG_ALREADY_SENT", "config: only the first request of a stream carries a config", {"field": "config"})


# -- the child ---------------------------------------------------------------------------


def _augment(augmenters: dict[str, Augmenter], header: tuple, data: bytes, max_pixels: int) -> bytes:
    key, pipeline, seed, start, first = header
    if key not in augmenters:
        if pipeline is None:
            raise RuntimeError("the pipeline was not sent with the first request of its stream")
        if len(augmenters) >= 16:
            augmenters.pop(next(iter(augmenters)))
        spec, categories = pickle.loads(pipeline)  # noqa: S301 - from the parent server process only
        augmenters[key] = Augmenter(spec, categories)
    augmenter = augmenters[key]
    try:
        request = pb.AugmentStreamRequest.FromString(data)
    except DecodeError:
        raise undecodable() from None
    if request.HasField("config") and not first:
        raise config_again()
    items = [convert.item_from_proto(m, f"items[{i}]", max_pixels) for i, m in enumerate(request.items)]
    results = run_planned(augmenter, planned(augmenter, items, seed, start_position=start))
    return convert.stream_response(results, augmenter.digest, start)


def _serve(connection: Any, max_pixels: int, max_message_bytes: int) -> None:
    """A child's loop: a header, the request's bytes; the response's bytes (or an error) back."""
    keep_large_blocks(max_message_bytes)  # each request and response is a fresh block of megabytes: no page faults
    augmenters: dict[str, Augmenter] = {}
    while True:
        try:
            header = connection.recv()
        except EOFError:
            return
        if header is None:
            return
        data = connection.recv_bytes()
        try:
            response = _augment(augmenters, header, data, max_pixels)
        except errors.SimulacraError as error:
            connection.send(("error", type(error).__name__, error.reason, error.message, dict(error.metadata)))
        except Exception as error:  # noqa: BLE001 - a bug: the parent raises it (INTERNAL, logged there)
            connection.send(("crash", f"{type(error).__name__}: {error}"))
        else:
            connection.send(("ok",))
            connection.send_bytes(response)


# -- the server side ---------------------------------------------------------------------------


class _Child:
    def __init__(self, context: Any, max_pixels: int, max_message_bytes: int) -> None:
        self.connection, theirs = context.Pipe()
        self.process = context.Process(target=_serve, args=(theirs, max_pixels, max_message_bytes), name="augmentation-engine", daemon=True)
        self.process.start()
        theirs.close()
        self.pipelines: set[str] = set()  # keys the child has cached

    def call(self, key: str, pipeline: bytes, seed: int, start: int, first: bool, data: bytes) -> bytes:
        known = key in self.pipelines
        self.connection.send((key, None if known else pipeline, seed, start, first))
        self.connection.send_bytes(data)
        self.pipelines.add(key)
        answer = self.connection.recv()
        if answer[0] == "ok":
            return self.connection.recv_bytes()  # type: ignore[no-any-return]
        if answer[0] == "error":
            _, name, reason, message, metadata = answer
            raise getattr(errors, name)(reason, message, metadata)
        raise RuntimeError(f"augmentation engine process: {answer[1]}")

    def stop(self, timeout: float) -> None:
        try:
            self.connection.send(None)
        except OSError:
            pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)
        self.connection.close()


class EngineProcesses:
    """``processes`` child processes that augment stream requests, one request each at a time."""

    def __init__(self, processes: int, max_pixels: int, max_message_bytes: int) -> None:
        if processes < 1:
            raise ValueError(f"engine processes must be at least 1, got {processes}")
        self._context = multiprocessing.get_context("spawn")
        self._limits = (max_pixels, max_message_bytes)
        self._lock = threading.Lock()
        self._children = [_Child(self._context, *self._limits) for _ in range(processes)]
        self._free: queue.SimpleQueue[_Child] = queue.SimpleQueue()
        for child in self._children:
            self._free.put(child)
        self._pool = ThreadPoolExecutor(processes, thread_name_prefix="augment-engine-pipe")

    @staticmethod
    def pipeline(augmenter: Augmenter) -> tuple[str, bytes]:
        """(key, pickled pipeline): once per stream."""
        blob = pickle.dumps((augmenter.spec, augmenter.categories), protocol=pickle.HIGHEST_PROTOCOL)
        return hashlib.sha256(blob).hexdigest(), blob

    async def stream_request(self, pipeline: tuple[str, bytes], data: bytes, seed: int, start: int, *, first: bool = False) -> bytes:
        """The serialized ``AugmentStreamResponse`` of a serialized request (``first``: it may carry the config)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._call, pipeline, data, seed, start, first)

    def _call(self, pipeline: tuple[str, bytes], data: bytes, seed: int, start: int, first: bool) -> bytes:
        child = self._free.get()
        try:
            return child.call(pipeline[0], pipeline[1], seed, start, first, data)
        except (EOFError, OSError):
            child = self._replace(child)
            raise errors.Unavailable(
                "ENGINE_PROCESS_EXITED", "the augmentation engine process serving this request exited; retry the stream from its position", {}
            ) from None
        finally:
            self._free.put(child)

    def _replace(self, dead: _Child) -> _Child:
        dead.stop(1.0)
        child = _Child(self._context, *self._limits)
        with self._lock:
            self._children[self._children.index(dead)] = child
        return child

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [c.process.pid for c in self._children if c.process.pid is not None]

    def close(self, timeout: float = 5.0) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            children = list(self._children)
        for child in children:
            child.stop(timeout)
