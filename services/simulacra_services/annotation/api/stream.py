"""StreamItems: a committed version's items as batched responses, from its rows and blobs or from its pack.

Two readers make the same responses:

- ``_StreamReader`` reads rows a few hundred at a time and the blobs of one
  response at a time, and joins the response's wire bytes (annotation/api/wire.py);
- ``_PackReader`` cuts the responses out of the version's stream pack
  (annotation/persistence/packs.py): the pieces every item's response field is
  made of, stored in stream order, so a response is a few slices of a segment and
  a cursor, with no blob read, query or join per item.

A request the pack can answer takes the pack: the FULL view, no filter, any
shard, any ``max_items_per_response``, from the start or from a cursor. Anything
else (a filter, the BASIC view, a version without a pack, packs switched off)
takes the row reader. Both cut responses with the same two functions
(``planned_count``, ``fitting_count``) on the same sizes, so the bytes are the
same whichever reader made them (tests/annotation/test_stream_packs.py compares
them). A complete FULL stream of a whole version without a filter, read by the
row reader, collects its pieces for the version's pack (``PackBuilder``), which
is published after the stream has ended, in a worker thread.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import numpy as np

from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.annotation.v1 import annotation_service_pb2 as api
from simulacra_services.annotation.api import convert, wire
from simulacra_services.annotation.domain import names
from simulacra_services.annotation.domain.model import PixelMap
from simulacra_services.annotation.domain.records import ItemRecord, ItemSlice
from simulacra_services.annotation.persistence import packs as pack_store
from simulacra_services.annotation.persistence.packs import Pack, PackBuilder, PackItem, PackStore
from simulacra_services.annotation.persistence.row_codec import EncodedItem
from simulacra_services.annotation.persistence.store import AnnotationStore
from simulacra_services.core import errors
from simulacra_services.core.api import pagination

STREAM_DEFAULT_ITEMS = 64
STREAM_MAX_ITEMS = 1000
STREAM_RESPONSE_BYTES = 1024 * 1024
"""A StreamItems response stops at about this many bytes of encoded items (a larger item travels alone)."""
PACK_WIRE = f"{wire.FORMAT}/encoded-item-{convert.ENCODED_ITEM_FORMAT}"
"""What a stream pack's pieces are (a pack made under another layout or item encoding is not used)."""
_STREAM_READ_ROWS = 256
_CURSOR_HINT = "start_cursor must be a cursor of an earlier response of a stream with the same parent, filter and shard"

_log = logging.getLogger("simulacra.annotation.stream")


def stream_items_per_response(requested: int) -> int:
    """``max_items_per_response`` of a StreamItems request: 0 = default, above the maximum = the maximum."""
    if requested < 0:
        raise errors.InvalidArgument(
            "INVALID_MAX_ITEMS_PER_RESPONSE",
            f"max_items_per_response must be >= 0 (0: the server default, {STREAM_DEFAULT_ITEMS}), got {requested}",
            {"field": "max_items_per_response", "value": requested},
        )
    return STREAM_DEFAULT_ITEMS if requested == 0 else min(requested, STREAM_MAX_ITEMS)


def planned_count(payloads: Iterable[int], items_per_response: int) -> int:
    """How many of the next items a response is planned for, from their image and pixel-map bytes
    (known before any blob is read): at most ``items_per_response``, and no more than
    ``STREAM_RESPONSE_BYTES`` of payload unless one item alone has more."""
    count = planned = 0
    for payload in payloads:
        if count == items_per_response or (count and planned + payload > STREAM_RESPONSE_BYTES):
            break
        planned += payload
        count += 1
    return count


def fitting_count(sizes: Iterable[int]) -> int:
    """How many of the planned items stay in the response by their encoded size (large annotations,
    such as long polygons, swell it): the first always, the others while the sum stays within the limit."""
    total = count = 0
    for size in sizes:
        total += size
        if count and total > STREAM_RESPONSE_BYTES:
            break
        count += 1
    return count


def _payload_bytes(record: EncodedItem | ItemRecord) -> int:
    """Image and pixel-map bytes the item will carry, known from its metadata before any blob is read."""
    if isinstance(record, EncodedItem):
        return record.image_size  # never has pixel maps
    size = record.image.size_bytes
    for annotation in record.annotations:
        geometry = annotation.geometry
        if isinstance(geometry, PixelMap):
            size += math.prod(geometry.shape) * np.dtype(geometry.dtype.value).itemsize
    return size


class _StreamReader:
    """Reads a StreamItems stream one response at a time, each call in a worker thread (never two at once).

    Rows are read from the database a few hundred at a time and kept until sent;
    a response takes the next rows up to the item and byte limits, then reads
    only their blobs, so memory stays near two responses whatever the images.
    Most items come with their stored encoding and are sent from it, joined
    with their image bytes into the response's wire bytes (annotation/api/wire.py);
    the others are decoded, converted and serialized. The cursor is encoded once per
    response, for its last item. ``builder``: collects every response's pieces for
    the version's pack (a whole, unfiltered FULL stream only).
    """

    def __init__(
        self, store: AnnotationStore, dataset_id: str, version: int, filter: str, shard_index: int, shard_count: int,
        full: bool, query: str, items_per_response: int, after: str, builder: PackBuilder | None = None,
    ) -> None:
        self.store, self.dataset_id, self.version, self.filter = store, dataset_id, version, filter
        self.shard_index, self.shard_count, self.full, self.query = shard_index, shard_count, full, query
        self.items_per_response = items_per_response
        self.read_rows = max(items_per_response, _STREAM_READ_ROWS)
        self.buffered: collections.deque[EncodedItem | ItemRecord] = collections.deque()
        self.last_read = after  # item_id of the last row read from the database
        self.exhausted = False
        self.builder = builder
        self.finished = False

    def _fill(self) -> None:
        """Top the buffer up to a full response when the database has more rows."""
        if self.exhausted or len(self.buffered) >= self.items_per_response:
            return
        where = ItemSlice(self.filter, self.last_read, self.shard_index, self.shard_count)
        rows = self.store.stream_page(self.dataset_id, self.version, where, limit=self.read_rows)
        self.buffered.extend(rows)
        self.exhausted = len(rows) < self.read_rows
        if rows:
            self.last_read = rows[-1].item_id

    def next_response(self) -> bytes | None:
        """The next response, serialized (see annotation/api/wire.py), or None at the end of the stream."""
        self._fill()
        if not self.buffered:
            self.finished = True
            return None
        # Plan by what the metadata tells before reading: the item limit, and the image and
        # pixel-map bytes, so that only the blobs of this response are read.
        payloads = [_payload_bytes(record) if self.full else 0 for record in self._upcoming()]
        records = [self.buffered.popleft() for _ in range(planned_count(payloads, self.items_per_response))]
        loaded = self.store.read_stream_entries(records) if self.full else [(record, None) for record in records]
        # Then by the encoded size, which large annotations (polygons, RLE masks) can swell:
        # items past the limit go back to the buffer for the next response.
        built: list[wire.Item] = []
        for record, image in loaded:
            if isinstance(record, EncodedItem):
                built.append(wire.encoded_item(record.encoded, self.version, image))
            else:
                built.append(wire.message_item(convert.item_to_proto(record, image)))
        kept = fitting_count(size for size, _ in built)
        self.buffered.extendleft(reversed(records[kept:]))
        items = built[:kept]
        cursor = pagination.encode_token([records[kept - 1].item_id, self.version], self.query)
        response = wire.stream_response(items, cursor)
        if self.builder is not None:
            pieces = memoryview(response)[: len(response) - len(wire.cursor_field(cursor))]
            self.builder.add(pieces, [
                PackItem(record.item_id, wire.piece_length(size), payload, size)
                for record, payload, (size, _) in zip(records, payloads, items)
            ])
        return response

    def _upcoming(self) -> Iterable[EncodedItem | ItemRecord]:
        """The buffered rows a response may take (at most ``items_per_response``)."""
        for index, record in enumerate(self.buffered):
            if index == self.items_per_response:
                return
            yield record


class _PackReader:
    """The responses of a stream cut out of the version's pack; ``after``: the pack position of the
    item to continue after (-1: from the start). Segments are read when first needed and dropped
    once passed, so memory stays near two segments."""

    def __init__(self, pack: Pack, version: int, shard_index: int, shard_count: int, query: str, items_per_response: int, after: int) -> None:
        self.pack, self.version, self.query, self.items_per_response = pack, version, query, items_per_response
        order: Sequence[int] = range(after + 1, len(pack))
        if shard_count > 1:
            shards = pack.shards
            order = [p for p in order if shards[p] % shard_count == shard_index]
        self.order = order
        self.at = 0
        self.last_sent = pack.item_ids[after] if after >= 0 else ""
        self.segments: dict[int, bytes] = {}

    def _segment(self, number: int) -> memoryview:
        data = self.segments.get(number)
        if data is None:
            for old in [n for n in self.segments if n < number]:
                del self.segments[old]
            data = self.segments[number] = self.pack.segment(number)
        return memoryview(data)

    def next_response(self) -> bytes | None:
        if self.at >= len(self.order):
            return None
        pack, start = self.pack, self.at
        upcoming = self.order[start : start + self.items_per_response]
        count = planned_count((pack.payloads[p] for p in upcoming), self.items_per_response)
        count = fitting_count(pack.sizes[p] for p in upcoming[:count])
        chosen = upcoming[:count]
        parts: list[Any] = []
        run_start = run_end = -1  # a run of consecutive pieces in one segment, sliced at once
        run_segment = -1
        for p in chosen:
            segment, offset = pack.segment_of[p], pack.offset_of[p]
            if segment == run_segment and offset == run_end:
                run_end += pack.pieces[p]
                continue
            if run_segment >= 0:
                parts.append(self._segment(run_segment)[run_start:run_end])
            run_segment, run_start, run_end = segment, offset, offset + pack.pieces[p]
        parts.append(self._segment(run_segment)[run_start:run_end])
        last = pack.item_ids[chosen[-1]]
        parts.append(wire.cursor_field(pagination.encode_token([last, self.version], self.query)))
        response = b"".join(parts)
        self.at = start + count
        self.last_sent = last
        return response


async def _run(function: Any, *args: Any) -> Any:
    return await asyncio.to_thread(function, *args)


class ItemStreams:
    """The StreamItems RPC over a store and its packs; ``close`` waits for pack builds in flight."""

    def __init__(self, store: AnnotationStore, packs: PackStore) -> None:
        self.store = store
        self.packs = packs
        self._publishing: set[asyncio.Task[None]] = set()

    async def stream(self, request: api.StreamItemsRequest) -> AsyncIterator[bytes]:
        """Responses as wire bytes (the server's interceptor passes bytes through)."""
        state = names.parse_version(request.parent, "parent")
        shard_index, shard_count = request.shard_index, request.shard_count
        if shard_count < 0 or not (0 <= shard_index < max(shard_count, 1)):
            raise errors.InvalidArgument(
                "INVALID_SHARD",
                f"shard_index must lie in [0, shard_count) (shard_count 0 or 1: no sharding), got {shard_index} of {shard_count}",
                {"field": "shard_index", "shard_index": shard_index, "shard_count": shard_count},
            )
        items_per_response = stream_items_per_response(request.max_items_per_response)
        full = convert.full_view(request.view, pb.ITEM_VIEW_FULL)
        dataset = await _run(self.store.get_dataset, state.dataset_id)
        query = pagination.fingerprint(
            rpc="StreamItems", dataset=state.dataset_id, created=dataset.create_time, filter=request.filter,
            shard=[shard_index, shard_count if shard_count > 1 else 0],
        )
        after = ""
        if request.start_cursor:
            # A cursor is [item_id, version]: the last item sent and the version the stream reads.
            after, version = pagination.decode_token(
                request.start_cursor, query, validate=pagination.values_of(pagination.is_str, pagination.is_int),
                field="start_cursor", reason="INVALID_CURSOR", hint=_CURSOR_HINT,
            )
            if state.version != "latest" and int(state.version or 0) != version:
                raise pagination.invalid_token("start_cursor", "made for a different version", reason="INVALID_CURSOR", hint=_CURSOR_HINT)
        else:
            version = (await _run(self.store.resolve_version, state.dataset_id, state.version or "latest")).version

        def rows_after(last: str, builder: PackBuilder | None = None) -> _StreamReader:
            return _StreamReader(
                self.store, state.dataset_id, version, request.filter, shard_index, shard_count, full, query, items_per_response, last, builder
            )

        reader: _StreamReader | _PackReader
        builder = None
        where = pack_store.location(state.dataset_id, dataset.create_time, version)
        pack = await _run(self.packs.load, where, PACK_WIRE) if full and not request.filter else None
        position = -1 if pack is None or not after else pack.position.get(after, -2)
        if pack is not None and position > -2:
            reader = _PackReader(pack, version, shard_index, shard_count, query, items_per_response, position)
        else:
            if full and not request.filter and not after and shard_count <= 1 and pack is None:
                builder = await _run(self.packs.builder, where, PACK_WIRE)  # opens a temporary file
            reader = rows_after(after, builder)
        pending = asyncio.ensure_future(_run(reader.next_response))
        try:
            while True:
                try:
                    response = await pending
                except Exception:
                    if not isinstance(reader, _PackReader):
                        raise
                    # The pack could not be read as its manifest says: the rest comes from the rows,
                    # the same bytes; the manifest goes, and the next whole stream builds the pack again.
                    _log.warning("stream pack of %s unusable, continuing from the rows after %r", where, reader.last_sent, exc_info=True)
                    await _run(self.packs.discard, where)
                    reader = rows_after(reader.last_sent)
                    pending = asyncio.ensure_future(_run(reader.next_response))
                    continue
                if response is None:
                    break
                pending = asyncio.ensure_future(_run(reader.next_response))  # read the next one while this one is sent
                yield response
        finally:
            if not pending.done():
                pending.cancel()
            if builder is not None:
                if isinstance(reader, _StreamReader) and reader.finished and not builder.abandoned:
                    self._publish(builder, state.dataset_id, dataset.create_time)
                else:
                    builder.abandon()

    def _publish(self, builder: PackBuilder, dataset_id: str, created: Any) -> None:
        """Store the pack in a worker thread, after the stream (its client does not wait for it)."""

        def publish() -> None:
            if builder.publish():
                try:
                    current = self.store.get_dataset(dataset_id).create_time == created
                except errors.NotFound:
                    current = False
                if not current:  # the dataset was deleted while the pack was written
                    self.packs.delete_dataset(dataset_id, created)

        task = asyncio.ensure_future(asyncio.to_thread(publish))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def close(self) -> None:
        """Wait for the packs being published (each a few puts)."""
        if self._publishing:
            await asyncio.gather(*self._publishing, return_exceptions=True)
