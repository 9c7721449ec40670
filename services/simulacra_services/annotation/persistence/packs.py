"""Stream packs: a committed version's stream stored read-optimised beside the blobs.

A committed version never changes, so what ``StreamItems`` sends for it can be
stored once and read back in large pieces instead of one blob read, one page
query and one join per item (docs/annotation-store.md, performance). A pack is

- segments: objects of about ``SEGMENT_BYTES`` holding the items' *pieces*,
  the bytes a stream response carries for each item, in stream order, cut at
  item boundaries (an item larger than a segment is a segment alone);
- a manifest (JSON): the segments' keys, sizes and SHA-256, and per item its
  id, its piece length, the sizes a response is planned by and its shard hash.

Keys: ``packs/annotation/{dataset_id}/{dataset create time}/v{version}/manifest``
and ``.../v{version}/{build id}/{segment number}``. The create time keeps a
dataset deleted and created again under the same id from meeting the old one's
packs. This layer knows no protobuf: the pieces are opaque bytes made by the
API edge, which names their format (``wire``); a manifest of another format or
pack layout is not used.

Publishing is atomic: a build writes its segments under a fresh build id and
the manifest last, in one put, and a pack exists only once its manifest does;
a build that dies (kill -9, a failed put) leaves segments no manifest names,
never read and removed with the dataset. Reads check each segment's size and
stored SHA-256 against the manifest before use and the store checks the bytes
against that SHA-256 (``ObjectStore.get``), so a segment that is not the one
the manifest names raises ``PackUnusable`` and the caller falls back.

Synchronous (object store I/O): async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
import logging
import tempfile
import threading
import uuid
from collections.abc import Sequence
from typing import IO, Any

from simulacra_services.annotation.persistence.row_codec import shard_hash
from simulacra_services.core import errors
from simulacra_services.core.storage import ObjectStore

PACK_ROOT = "packs/annotation"
PACK_LAYOUT = 1
"""Version of the manifest and segment layout written here; a manifest of another layout is not used."""
SEGMENT_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_PACK_BYTES = 2 * 1024 * 1024 * 1024
_CACHED_PACKS = 8
_MANIFEST = "manifest"

_log = logging.getLogger("simulacra.annotation.packs")


class PackUnusable(Exception):
    """A pack that cannot be read as its manifest says (a segment missing, changed or corrupt)."""


@dataclasses.dataclass(frozen=True)
class PackItem:
    """What a pack records of one item, besides its piece: its id, the piece's length, the bytes a
    response is planned by (``payload``: image and pixel-map bytes; ``size``: the encoded item)."""

    item_id: str
    piece: int
    payload: int
    size: int


class Pack:
    """A published pack's index; segments are read on demand (``segment``)."""

    def __init__(self, objects: ObjectStore, location: str, manifest: dict[str, Any]) -> None:
        self.objects = objects
        self.location = location
        self.segments: list[tuple[str, int, str]] = [(s["key"], int(s["size"]), s["sha256"]) for s in manifest["segments"]]
        items = manifest["items"]
        self.item_ids: list[str] = items["ids"]
        self.pieces: list[int] = items["pieces"]
        self.payloads: list[int] = items["payloads"]
        self.sizes: list[int] = items["sizes"]
        self.shards: list[int] = items["shards"]
        counts: list[int] = items["per_segment"]
        count = len(self.item_ids)
        if not (len(self.pieces) == len(self.payloads) == len(self.sizes) == len(self.shards) == count == sum(counts)) or len(counts) != len(self.segments):
            raise ValueError("the manifest's item lists do not agree")
        self.segment_of: list[int] = []
        self.offset_of: list[int] = []
        at = 0
        for number, ((_, size, _), n) in enumerate(zip(self.segments, counts)):
            offset = 0
            for piece in self.pieces[at : at + n]:
                self.segment_of.append(number)
                self.offset_of.append(offset)
                offset += piece
            if offset != size:
                raise ValueError(f"segment {number}: its pieces add up to {offset} bytes, the manifest says {size}")
            at += n
        self.position = {item_id: index for index, item_id in enumerate(self.item_ids)}

    def __len__(self) -> int:
        return len(self.item_ids)

    def segment(self, number: int) -> bytes:
        """The bytes of segment ``number``, checked against the manifest (``PackUnusable`` otherwise)."""
        key, size, sha256 = self.segments[number]
        try:
            info = self.objects.head(key)
            if info.size != size or info.sha256 != sha256:
                raise PackUnusable(f"segment {key!r} is not the one the manifest names (size {info.size}, sha256 {info.sha256[:12]})")
            # One chunk, no join: the store checks the bytes against the stored SHA-256 once read.
            data = b"".join(self.objects.iter_chunks(key, chunk_size=max(size, 1)))
        except errors.SimulacraError as error:
            raise PackUnusable(f"segment {key!r}: {error}") from error
        if len(data) != size:
            raise PackUnusable(f"segment {key!r}: {len(data)} bytes, the manifest says {size}")
        return data


def location(dataset_id: str, created: dt.datetime, version: int) -> str:
    """The key prefix of a version's pack (see the module docstring)."""
    return f"{PACK_ROOT}/{dataset_id}/{created.strftime('%Y%m%dT%H%M%S%f')}/v{version}"


class PackBuilder:
    """Collects the pieces of one complete stream of a version in a temporary file (``add``), then
    stores them as a pack (``publish``). Gives up, keeping nothing, past ``max_bytes``."""

    def __init__(self, packs: PackStore, location: str, wire: str, max_bytes: int) -> None:
        self.packs, self.location, self.wire, self.max_bytes = packs, location, wire, max_bytes
        self.items: list[PackItem] = []
        self.total = 0
        self.abandoned = False
        self.spool: IO[bytes] | None = tempfile.TemporaryFile(prefix="simulacra-pack-")

    def add(self, pieces: bytes | memoryview, items: Sequence[PackItem]) -> None:
        """The pieces of the next items of the stream, in order (``pieces``: theirs, joined)."""
        if self.spool is None:
            return
        if self.total + len(pieces) > self.max_bytes:
            _log.info("stream pack of %s not built: the version's stream is over %d bytes (stream_pack_max_bytes)", self.location, self.max_bytes)
            self.abandon()
            return
        self.spool.write(pieces)
        self.total += len(pieces)
        self.items.extend(items)

    def abandon(self) -> None:
        """Drop what was collected (the stream broke off, or grew past the limit)."""
        self.abandoned = True
        self.packs.release(self.location)
        if self.spool is not None:
            self.spool.close()
            self.spool = None

    def publish(self) -> bool:
        """Store the segments, then the manifest (the pack exists from then on); whether it was published."""
        if self.spool is None:
            return False
        written: list[str] = []
        try:
            build = uuid.uuid4().hex[:16]
            segments: list[dict[str, Any]] = []
            per_segment: list[int] = []
            self.spool.seek(0)
            start = 0
            while start < len(self.items):
                end, size = start + 1, self.items[start].piece
                while end < len(self.items) and size + self.items[end].piece <= self.packs.segment_bytes:
                    size += self.items[end].piece
                    end += 1
                data = self.spool.read(size)
                key = f"{self.location}/{build}/{len(segments):05d}"
                info = self.packs.objects.put(key, data)
                written.append(key)
                segments.append({"key": key, "size": info.size, "sha256": info.sha256})
                per_segment.append(end - start)
                start = end
            manifest = {
                "layout": PACK_LAYOUT,
                "wire": self.wire,
                "segments": segments,
                "items": {
                    "ids": [item.item_id for item in self.items],
                    "pieces": [item.piece for item in self.items],
                    "payloads": [item.payload for item in self.items],
                    "sizes": [item.size for item in self.items],
                    "shards": [shard_hash(item.item_id) for item in self.items],
                    "per_segment": per_segment,
                },
            }
            self.packs.objects.put(f"{self.location}/{_MANIFEST}", json.dumps(manifest, separators=(",", ":")).encode(), content_type="application/json")
            return True
        except Exception:
            _log.warning("stream pack of %s not published", self.location, exc_info=True)
            for key in written:  # best effort: no manifest names them, so they are never read anyway
                try:
                    self.packs.objects.delete(key)
                except Exception:  # noqa: BLE001 (the store may be what failed)
                    break
            return False
        finally:
            self.abandon()


class PackStore:
    """The packs on an object store: find and load a version's pack, start a build, remove packs.

    ``enabled``: whether packs are built and used (setting stream_packs); packs are
    removed with their dataset either way. ``max_bytes``: no pack is built for a
    version whose stream is larger (setting stream_pack_max_bytes). ``segment_bytes``:
    the size segments are cut to.
    """

    def __init__(
        self, objects: ObjectStore, *, enabled: bool = False, max_bytes: int = DEFAULT_MAX_PACK_BYTES, segment_bytes: int = SEGMENT_BYTES,
    ) -> None:
        self.objects = objects
        self.segment_bytes = segment_bytes
        self.enabled = enabled
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._cache: collections.OrderedDict[str, Pack] = collections.OrderedDict()
        self._building: set[str] = set()

    def load(self, location: str, wire: str) -> Pack | None:
        """The published pack at ``location`` made for ``wire``, or None (none, or not usable)."""
        if not self.enabled:
            return None
        with self._lock:
            pack = self._cache.get(location)
            if pack is not None:
                self._cache.move_to_end(location)
                return pack
        try:
            manifest = json.loads(self.objects.get(f"{location}/{_MANIFEST}"))
        except errors.NotFound:
            return None
        except Exception:
            _log.warning("stream pack manifest of %s unreadable; the stream reads items one by one", location, exc_info=True)
            return None
        if not isinstance(manifest, dict) or manifest.get("layout") != PACK_LAYOUT or manifest.get("wire") != wire:
            return None  # written by another version of the service: rebuilt by the next complete stream
        try:
            pack = Pack(self.objects, location, manifest)
        except (KeyError, TypeError, ValueError):
            _log.warning("stream pack manifest of %s malformed; the stream reads items one by one", location, exc_info=True)
            return None
        with self._lock:
            self._cache[location] = pack
            while len(self._cache) > _CACHED_PACKS:
                self._cache.popitem(last=False)
        return pack

    def builder(self, location: str, wire: str) -> PackBuilder | None:
        """A builder for the pack at ``location``, unless packs are off or one is being built here already."""
        if not self.enabled:
            return None
        with self._lock:
            if location in self._building:
                return None
            self._building.add(location)
        try:
            return PackBuilder(self, location, wire, self.max_bytes)
        except BaseException:
            self.release(location)
            raise

    def release(self, location: str) -> None:
        with self._lock:
            self._building.discard(location)

    def discard(self, location: str) -> None:
        """Forget a pack found unusable and remove its manifest (the next complete stream builds it again)."""
        with self._lock:
            self._cache.pop(location, None)
        try:
            self.objects.delete(f"{location}/{_MANIFEST}")
        except errors.NotFound:
            pass

    def delete_dataset(self, dataset_id: str, created: dt.datetime | None = None) -> int:
        """Remove every pack of ``dataset_id`` (all its versions, and those of any earlier dataset of
        that id), or with ``created`` only those of the dataset created then; the objects removed."""
        prefix = f"{PACK_ROOT}/{dataset_id}/" if created is None else location(dataset_id, created, 0).rpartition("/")[0] + "/"
        with self._lock:
            for key in [k for k in self._cache if k.startswith(prefix)]:
                del self._cache[key]
        removed = 0
        # Manifests first, so that no pack is ever found with part of its segments gone.
        keys = [info.key for info in self.objects.list(prefix)]
        for key in sorted(keys, key=lambda k: not k.endswith(f"/{_MANIFEST}")):
            try:
                self.objects.delete(key)
                removed += 1
            except errors.NotFound:
                pass
        return removed
