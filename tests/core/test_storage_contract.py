"""One contract for every object store: each test runs against local files and against S3 (SeaweedFS)."""

from __future__ import annotations

import datetime
import hashlib
import random
import socket
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from simulacra_services.core import errors
from simulacra_services.core.config import Settings
from simulacra_services.core.storage import LocalObjectStore, ObjectStore, S3ObjectStore, open_object_store
from simulacra_services.core.storage.keys import MAX_KEY_BYTES, OBJECT_SUFFIX, TEMP_PREFIX
from simulacra_services.core.storage.local import HEADER_SIZE

MiB = 1024 * 1024


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        opened: ObjectStore = LocalObjectStore(tmp_path / "objects")
    else:
        server = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("s3_bucket")
        opened = S3ObjectStore(server.endpoint, server.access_key, server.secret_key, bucket)
    with opened:
        yield opened


@pytest.fixture
def corrupt(store: ObjectStore, request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Change an object's bytes behind the store's back, keeping its stored checksum."""

    def corrupt_local(key: str) -> None:
        assert isinstance(store, LocalObjectStore)
        path = store.root / (key + OBJECT_SUFFIX)
        with path.open("r+b") as file:
            file.seek(HEADER_SIZE)
            first = file.read(1)
            file.seek(HEADER_SIZE)
            file.write(bytes([first[0] ^ 0xFF]))

    def corrupt_s3(key: str) -> None:
        assert isinstance(store, S3ObjectStore)
        client = request.getfixturevalue("s3_server").client()
        old_sha256 = client.stat_object(store.bucket, key).metadata["x-amz-meta-sha256"]
        data = b"tampered" + store.get(key)[8:]
        client.put_object(store.bucket, key, _BytesReader(data), len(data), metadata={"sha256": old_sha256})

    return corrupt_local if isinstance(store, LocalObjectStore) else corrupt_s3


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._data, self._offset = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else self._offset + size
        chunk, self._offset = self._data[self._offset:end], min(end, len(self._data))
        return chunk


class PatternReader:
    """``size`` pseudo-random bytes produced on demand, never held in memory all at once."""

    def __init__(self, size: int, *, fail_after: int | None = None, seed: int = 7) -> None:
        self.remaining, self.fail_after, self.produced = size, fail_after, 0
        self.sha256 = hashlib.sha256()
        self._random = random.Random(seed)

    def read(self, size: int = -1) -> bytes:
        if self.fail_after is not None and self.produced >= self.fail_after:
            raise ConnectionResetError("client went away mid-upload")
        size = self.remaining if size < 0 else min(size, self.remaining)
        chunk = self._random.randbytes(size)
        self.remaining -= size
        self.produced += size
        self.sha256.update(chunk)
        return chunk


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["a", "datasets/ds-1/items/0001.png", "名前/ünïcode key (1).bin", "a/.hidden"])
def test_put_then_get_returns_the_same_bytes(store: ObjectStore, key: str) -> None:
    data = b"\x00binary\xffdata" * 100
    info = store.put(key, data, content_type="image/png")
    assert (info.key, info.size, info.sha256, info.content_type) == (key, len(data), sha(data), "image/png")
    assert store.get(key) == data
    assert b"".join(store.iter_chunks(key, chunk_size=7)) == data
    assert store.exists(key)


def test_empty_object_round_trips(store: ObjectStore) -> None:
    info = store.put("empty", b"")
    assert (info.size, info.sha256, info.content_type) == (0, sha(b""), "application/octet-stream")
    assert store.get("empty") == b""


def test_head_describes_the_object(store: ObjectStore) -> None:
    before = datetime.datetime.now(datetime.timezone.utc)
    written = store.put("x/y.json", b'{"a": 1}', content_type="application/json")
    info = store.head("x/y.json")
    assert (info.key, info.size, info.sha256, info.content_type) == ("x/y.json", 8, sha(b'{"a": 1}'), "application/json")
    assert info == written
    assert info.modified.utcoffset() == datetime.timedelta(0)
    # S3 keeps whole seconds; this only checks the clock and zone are the right ones.
    assert before - datetime.timedelta(minutes=5) < info.modified < before + datetime.timedelta(minutes=5)


def test_overwrite_replaces_the_object(store: ObjectStore) -> None:
    store.put("k", b"first version", content_type="text/plain")
    store.put("k", b"second", content_type="application/json")
    assert store.get("k") == b"second"
    info = store.head("k")
    assert (info.size, info.sha256, info.content_type) == (6, sha(b"second"), "application/json")
    assert [i.key for i in store.list()] == ["k"]


def test_a_key_and_keys_below_it_coexist(store: ObjectStore) -> None:
    store.put("a", b"file")
    store.put("a/b", b"below")
    assert (store.get("a"), store.get("a/b")) == (b"file", b"below")


# ---- listing ------------------------------------------------------------------------------

# '-' (0x2d) and '.' (0x2e) sort before '/' (0x2f), which sorts before letters:
# a store that walks directories naively gets this order wrong.
KEYS = ["a", "a-c", "a.txt", "a/b", "a/b/c", "a/b0", "a/ba/z", "ab", "b/é", "b/z"]


@pytest.fixture
def filled(store: ObjectStore) -> ObjectStore:
    for key in reversed(KEYS):
        store.put(key, key.encode(), content_type="text/plain")
    return store


def test_list_returns_every_object_in_key_order(filled: ObjectStore) -> None:
    listed = list(filled.list())
    assert [i.key for i in listed] == sorted(KEYS, key=lambda k: k.encode())
    assert all(i.size == len(i.key.encode()) and i.sha256 == sha(i.key.encode()) for i in listed)
    assert {i.content_type for i in listed} == {"text/plain"}


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("a/", ["a/b", "a/b/c", "a/b0", "a/ba/z"]),
        ("a/b", ["a/b", "a/b/c", "a/b0", "a/ba/z"]),
        ("a/b/", ["a/b/c"]),
        ("a", ["a", "a-c", "a.txt", "a/b", "a/b/c", "a/b0", "a/ba/z", "ab"]),
        ("b/", ["b/z", "b/é"]),
        ("nothing/", []),
        ("zzz", []),
    ],
)
def test_list_by_prefix(filled: ObjectStore, prefix: str, expected: list[str]) -> None:
    assert [i.key for i in filled.list(prefix)] == expected


def test_list_start_after_and_limit_page_through_everything(filled: ObjectStore) -> None:
    ordered = sorted(KEYS, key=lambda k: k.encode())
    assert [i.key for i in filled.list(start_after="a/b")] == ordered[ordered.index("a/b") + 1 :]
    assert [i.key for i in filled.list(start_after="a/b/")] == ordered[ordered.index("a/b/c") :]
    assert [i.key for i in filled.list("a/", start_after="a/b0")] == ["a/ba/z"]
    assert [i.key for i in filled.list(limit=3)] == ordered[:3]
    assert list(filled.list(limit=0)) == []
    pages, after = [], ""
    while page := [i.key for i in filled.list(start_after=after, limit=3)]:
        pages.append(page)
        after = page[-1]
    assert [key for page in pages for key in page] == ordered
    assert [len(page) for page in pages] == [3, 3, 3, 1]


def test_list_refuses_bad_arguments(store: ObjectStore) -> None:
    for prefix in ("/abs", "a//", "../", "a\\b", "a/./"):
        with pytest.raises(errors.InvalidArgument) as caught:
            list(store.list(prefix))
        assert caught.value.reason == "INVALID_OBJECT_PREFIX"
    with pytest.raises(errors.InvalidArgument) as caught:
        store.list(limit=-1)
    assert caught.value.reason == "INVALID_LIST_LIMIT"


# ---- missing objects ------------------------------------------------------------------------


def test_delete_removes_and_a_second_delete_is_not_found(store: ObjectStore) -> None:
    store.put("gone/soon", b"x")
    store.put("gone/stays", b"y")
    store.delete("gone/soon")
    assert not store.exists("gone/soon")
    assert [i.key for i in store.list("gone/")] == ["gone/stays"]
    for call in (store.get, store.head, store.delete):
        with pytest.raises(errors.NotFound) as caught:
            call("gone/soon")
        assert (caught.value.reason, caught.value.metadata) == ("OBJECT_NOT_FOUND", {"key": "gone/soon"})


def test_reading_a_missing_object_is_not_found(store: ObjectStore) -> None:
    with pytest.raises(errors.NotFound) as caught:
        store.get("never/written")
    assert caught.value.reason == "OBJECT_NOT_FOUND"
    with pytest.raises(errors.NotFound):
        store.iter_chunks("never/written")  # raised by the call, before any iteration
    assert not store.exists("never/written")


# ---- integrity ------------------------------------------------------------------------------


def test_corrupted_bytes_are_detected_on_every_read(store: ObjectStore, corrupt: Callable[[str], None]) -> None:
    data = bytes(range(256)) * 64
    store.put("victim", data)
    corrupt("victim")
    with pytest.raises(errors.DataLoss) as caught:
        store.get("victim")
    assert caught.value.reason == "CHECKSUM_MISMATCH"
    assert caught.value.metadata["key"] == "victim"
    assert caught.value.metadata["expected"] == sha(data)
    assert caught.value.metadata["actual"] not in ("", sha(data))

    received = []
    with pytest.raises(errors.DataLoss) as streamed:
        for chunk in store.iter_chunks("victim", chunk_size=1000):
            received.append(chunk)
    assert streamed.value.reason == "CHECKSUM_MISMATCH"
    assert sum(map(len, received)) == len(data)  # raised at the end of the stream, not before


def test_large_object_is_streamed_without_holding_it(store: ObjectStore) -> None:
    size = 40 * MiB
    source = PatternReader(size)
    tracemalloc.start()
    try:
        info = store.put_stream("big/blob", source)
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        digest, received = hashlib.sha256(), 0
        for chunk in store.iter_chunks("big/blob", chunk_size=MiB):
            digest.update(chunk)
            received += len(chunk)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (info.size, info.sha256) == (size, source.sha256.hexdigest())
    assert (received, digest.hexdigest()) == (size, source.sha256.hexdigest())
    assert put_peak < size / 2, f"put_stream held {put_peak / MiB:.1f} MiB of a {size // MiB} MiB object"
    assert read_peak < size / 2, f"iter_chunks held {read_peak / MiB:.1f} MiB of a {size // MiB} MiB object"


# ---- bad input ------------------------------------------------------------------------------

BAD_KEYS = {
    "empty": "",
    "absolute": "/abs",
    "parent segment": "a/../b",
    "parent": "..",
    "current": "./a",
    "empty segment": "a//b",
    "backslash": "a\\b",
    "nul": "a\x00b",
    "newline": "a\nb",
    "delete char": "a\x7fb",
    "too long": "k" * (MAX_KEY_BYTES + 1),
    "too long in UTF-8": "é" * (MAX_KEY_BYTES // 2 + 1),
    "trailing slash": "a/",
    "temp name": f"a/{TEMP_PREFIX}x",
    "object suffix": f"a{OBJECT_SUFFIX}/b",
    "lone surrogate": "a\udc80",
    "not a string": b"a",
}


@pytest.mark.parametrize("key", BAD_KEYS.values(), ids=BAD_KEYS.keys())
def test_bad_keys_are_refused_by_every_call(store: ObjectStore, key: str) -> None:
    calls: list[Callable[[], object]] = [
        lambda: store.put(key, b"x"),
        lambda: store.put_stream(key, PatternReader(10)),
        lambda: store.get(key),
        lambda: store.iter_chunks(key),
        lambda: store.head(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
    ]
    for call in calls:
        with pytest.raises(errors.InvalidArgument) as caught:
            call()
        assert caught.value.reason == "INVALID_OBJECT_KEY"
        assert "key" in caught.value.metadata
    assert list(store.list()) == []


def test_bad_content_type_is_refused(store: ObjectStore) -> None:
    for content_type in ("", "text/plain\r\nX-Injected: 1", "x" * 256):
        with pytest.raises(errors.InvalidArgument) as caught:
            store.put("k", b"x", content_type=content_type)
        assert caught.value.reason == "INVALID_CONTENT_TYPE"
    assert not store.exists("k")


# ---- atomicity and concurrency --------------------------------------------------------------


def test_an_interrupted_write_leaves_nothing(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(ConnectionResetError):
        store.put_stream("half/written", PatternReader(12 * MiB, fail_after=6 * MiB))
    assert not store.exists("half/written")
    assert list(store.list()) == []
    if isinstance(store, LocalObjectStore):
        assert [p for p in store.root.rglob("*") if not p.is_dir()] == []


def test_an_interrupted_overwrite_keeps_the_old_object(store: ObjectStore) -> None:
    store.put("kept", b"old and whole")
    with pytest.raises(ConnectionResetError):
        store.put_stream("kept", PatternReader(3 * MiB, fail_after=MiB))
    assert store.get("kept") == b"old and whole"


def test_concurrent_writers_of_different_keys(store: ObjectStore) -> None:
    failures: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for i in range(15):
                store.put(f"shared/dir/w{worker}-{i:02d}", f"{worker}:{i}".encode() * 100)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    keys = [i.key for i in store.list("shared/")]
    assert keys == sorted(f"shared/dir/w{w}-{i:02d}" for w in range(2) for i in range(15))
    assert all(store.get(k) == f"{k[12]}:{int(k[14:])}".encode() * 100 for k in keys)


# ---- factory --------------------------------------------------------------------------------


def test_factory_opens_local_storage_under_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path), storage_backend="local")
    with open_object_store(settings) as store:
        assert isinstance(store, LocalObjectStore)
        assert store.root == (tmp_path / "objects").resolve()
        store.put("k", b"v")
    with open_object_store(settings.replace(storage_dir=str(tmp_path / "elsewhere"))) as store:
        assert store.root == (tmp_path / "elsewhere").resolve()
        assert not store.exists("k")


def test_factory_opens_s3_and_creates_the_bucket(s3_server) -> None:
    settings = Settings(
        storage_backend="s3", s3_endpoint=s3_server.endpoint, s3_bucket="factory-made",
        s3_access_key=s3_server.access_key, s3_secret_key=s3_server.secret_key,
    )
    assert not s3_server.client().bucket_exists("factory-made")
    with open_object_store(settings) as store:
        assert isinstance(store, S3ObjectStore)
        store.put("k", b"v")
    assert s3_server.client().bucket_exists("factory-made")
    with open_object_store(settings) as again:  # an existing bucket is used as it is
        assert again.get("k") == b"v"


def test_s3_with_a_wrong_secret_is_refused(s3_server) -> None:
    with pytest.raises(errors.Unavailable) as caught:
        S3ObjectStore(s3_server.endpoint, s3_server.access_key, "wrong-secret", "any-bucket")
    assert caught.value.reason == "STORAGE_ACCESS_DENIED"
    assert "AWS_SECRET_ACCESS_KEY" in caught.value.message


def test_unreachable_s3_is_unavailable() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        endpoint = f"127.0.0.1:{probe.getsockname()[1]}"
    settings = Settings(storage_backend="s3", s3_endpoint=endpoint, s3_access_key="a", s3_secret_key="b")
    with pytest.raises(errors.Unavailable) as caught:
        open_object_store(settings)
    assert caught.value.reason == "STORAGE_UNAVAILABLE"
    assert endpoint in caught.value.message


def test_only_network_backends_ask_for_parallel_reads(store: ObjectStore) -> None:
    assert store.prefers_parallel_reads is isinstance(store, S3ObjectStore)


def test_list_children_names_one_level_and_survives_emptied_directories(store: ObjectStore) -> None:
    for key in ["m/a/x", "m/a/y/z", "m/b/x", "m/top", "n/c/x"]:
        store.put(key, b"1")
    assert store.list_children("m/") == ["a", "b"]
    assert store.list_children("m/a/") == ["y"]
    store.delete("m/b/x")
    # An emptied directory may linger (SeaweedFS keeps it) but never lists itself as its own child.
    assert set(store.list_children("m/")) <= {"a", "b"} and "a" in store.list_children("m/")
    assert [info.key for info in store.list("m/b")] == []
    with pytest.raises(errors.InvalidArgument):
        store.list_children("m")
