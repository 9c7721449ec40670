"""The sampling runtime on its own: counter-based noise, encodings, ONNX sessions, the dynamic batcher."""

from __future__ import annotations

import asyncio
import io
import threading

import numpy as np
import pytest
from PIL import Image

from simulacra_services.core import errors
from simulacra_services.sampling.runtime import encode, noise
from simulacra_services.sampling.runtime.batcher import BatchingPolicy, DynamicBatcher
from simulacra_services.sampling.runtime.session import GeneratorSession, SessionOptions
from tests.sampling.generators import DIGITS, PLAIN, SCENES, export

# ---- Philox4x32-10 and the noise built on it -------------------------------------------------


@pytest.mark.parametrize(
    ("counter", "key", "expected"),
    [  # Known-answer vectors of the Random123 reference (kat_vectors, philox4x32 10 rounds)
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0), (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ],
)
def test_philox_matches_the_reference_vectors(counter, key, expected) -> None:  # noqa: ANN001
    out = noise.philox4x32(np.array([counter], dtype=np.uint64), key)
    assert tuple(int(x) for x in out[0]) == expected


def test_a_latent_vector_depends_on_seed_and_index_only() -> None:
    everything = noise.latents(7, np.arange(200), 16)
    assert everything.dtype == np.float32 and everything.shape == (200, 16)
    for start, size in ((0, 1), (13, 7), (150, 50)):
        assert np.array_equal(noise.latents(7, np.arange(start, start + size), 16), everything[start : start + size])
    shuffled = np.array([150, 3, 99], dtype=np.uint64)
    assert np.array_equal(noise.latents(7, shuffled, 16), everything[[150, 3, 99]])
    assert not np.array_equal(noise.latents(8, np.arange(200), 16), everything)
    huge = np.array([2**64 - 1, 2**32], dtype=np.uint64)
    assert np.isfinite(noise.latents(2**64 - 1, huge, 16)).all()


def test_latents_are_standard_normal() -> None:
    z = noise.latents(1, np.arange(4000), 32).astype(np.float64)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    # Box-Muller pairs are independent: correlation of neighbouring coordinates is ~0
    assert abs(np.corrcoef(z[:, 0], z[:, 1])[0, 1]) < 0.05


def test_box_muller_of_the_first_block_is_the_documented_formula() -> None:
    words = noise.philox4x32(np.array([[5, 0, 0, 0]], dtype=np.uint64), (42, 0))[0].astype(np.float64)
    u = (words + 0.5) / 2**32
    r0, r1 = np.sqrt(-2 * np.log(u[0])), np.sqrt(-2 * np.log(u[2]))
    expected = np.array([r0 * np.cos(2 * np.pi * u[1]), r0 * np.sin(2 * np.pi * u[1]), r1 * np.cos(2 * np.pi * u[3]), r1 * np.sin(2 * np.pi * u[3])])
    assert np.array_equal(noise.latents(42, np.array([5]), 4)[0], expected.astype(np.float32))


def test_truncation_redraws_only_the_coordinates_outside() -> None:
    plain = noise.latents(3, np.arange(300), 16)
    cut = noise.latents(3, np.arange(300), 16, truncation=0.5)
    assert np.abs(cut).max() <= 0.5
    inside = np.abs(plain) <= 0.5
    assert np.array_equal(cut[inside], plain[inside]) and not np.array_equal(cut, plain)
    assert np.array_equal(noise.latents(3, np.arange(100, 110), 16, truncation=0.5), cut[100:110])
    with pytest.raises(ValueError):
        noise.latents(3, np.arange(2), 16, truncation=0.0)


def test_labels_follow_the_class_mix_and_are_per_index() -> None:
    drawn = noise.labels(9, np.arange(20000), {1: 1.0, 3: 3.0, 5: 0.0}, 10)
    counts = np.bincount(drawn, minlength=10)
    assert set(np.nonzero(counts)[0]) == {1, 3}
    assert abs(counts[3] / counts[1] - 3) < 0.2
    assert np.array_equal(noise.labels(9, np.arange(500, 510), {1: 1.0, 3: 3.0}, 10), drawn[500:510])
    uniform = noise.labels(9, np.arange(10000), {}, 10)
    assert set(np.unique(uniform)) == set(range(10))
    assert not noise.labels(9, np.arange(10), {}, 0).any()


def test_attributes_are_drawn_per_attribute_from_their_weights() -> None:
    drawn = noise.attributes(4, np.arange(3000), [(1.0, 0.0, 1.0), (0.0, 1.0)])
    assert drawn.shape == (3000, 2)
    assert set(np.unique(drawn[:, 0])) == {0, 2} and set(np.unique(drawn[:, 1])) == {1}
    assert np.array_equal(noise.attributes(4, np.arange(10, 20), [(1.0, 0.0, 1.0), (0.0, 1.0)]), drawn[10:20])


# ---- encodings --------------------------------------------------------------------------------


def test_uint8_is_the_documented_rounding_in_place() -> None:
    x = np.array([-1.0, -0.99, 0.0, 0.5, 1.0, 1.5, -3.0, 0.003921569], dtype=np.float32).reshape(1, 1, 2, 4)
    expected = np.clip(np.rint((x.astype(np.float32) + np.float32(1)) * np.float32(127.5)), 0, 255).astype(np.uint8)
    out = encode.to_uint8_inplace(x)
    assert out.dtype == np.uint8 and np.array_equal(out, expected)
    assert out.ravel().tolist()[:5] == [0, 1, 128, 191, 255]


def test_nhwc_and_png() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(2, 3, 5, 4), dtype=np.uint8)
    nhwc = encode.to_layout(pixels, encode.Layout.NHWC)
    assert nhwc.shape == (2, 5, 4, 3) and nhwc.flags.c_contiguous and nhwc[1, 2, 3, 0] == pixels[1, 0, 2, 3]
    for channels, mode in ((1, "L"), (3, "RGB"), (4, "RGBA")):
        image = pixels[0, :1] if channels == 1 else rng.integers(0, 256, size=(channels, 5, 4), dtype=np.uint8)
        decoded = Image.open(io.BytesIO(encode.png_bytes(image)))
        assert decoded.mode == mode and decoded.size == (4, 5)
        array = np.asarray(decoded)
        assert np.array_equal(array if channels > 1 else array[None], image.transpose(1, 2, 0) if channels > 1 else image)


# ---- ONNX Runtime sessions --------------------------------------------------------------------


def test_a_session_checks_the_signature_and_runs_on_cpu() -> None:
    session = GeneratorSession(export(DIGITS), DIGITS, SessionOptions(intra_op_threads=1))
    assert session.provider == "CPUExecutionProvider"
    out = session.run(np.zeros((3, 16), np.float32), np.array([0, 1, 9]))
    assert out.shape == (3, 1, 8, 8) and out.dtype == np.float32 and np.abs(out).max() <= 1
    scenes = GeneratorSession(export(SCENES), SCENES, SessionOptions(intra_op_threads=1))
    assert scenes.run(np.zeros((2, 8), np.float32), np.zeros(2, np.int64), np.array([[0, 1], [2, 0]])).shape == (2, 3, 8, 8)
    with pytest.raises(errors.FailedPrecondition) as raised:
        GeneratorSession(export(DIGITS), SCENES, SessionOptions())
    assert raised.value.reason == "ONNX_SIGNATURE_MISMATCH"
    with pytest.raises(errors.FailedPrecondition) as raised:
        GeneratorSession(b"not onnx", DIGITS, SessionOptions())
    assert raised.value.reason == "INVALID_ONNX_MODEL"
    with pytest.raises(errors.InvalidArgument):
        GeneratorSession(export(PLAIN), PLAIN, SessionOptions(provider="abacus"))


def test_rows_do_not_depend_on_the_batch_they_run_in() -> None:
    """What makes dynamic batching safe for determinism, checked on this build's CPU kernels."""
    session = GeneratorSession(export(DIGITS), DIGITS, SessionOptions(intra_op_threads=2))
    z = noise.latents(5, np.arange(64), 16)
    labels = noise.labels(5, np.arange(64), {}, 10)
    whole = session.run(z, labels)
    for size in (1, 3, 17):
        parts = np.concatenate([session.run(z[i : i + size], labels[i : i + size]) for i in range(0, 64, size)])
        assert np.array_equal(parts, whole)


# ---- the dynamic batcher ----------------------------------------------------------------------


class CountingRun:
    """A run function that records the batch sizes it was called with (on worker threads)."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.threads: set[str] = set()
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, z: np.ndarray, labels: np.ndarray, attributes: np.ndarray | None) -> np.ndarray:
        self.gate.wait(10)
        self.sizes.append(len(z))
        self.threads.add(threading.current_thread().name)
        return (z[:, :1, None, None] * 2 + labels[:, None, None, None]).astype(np.float32)


async def test_concurrent_requests_become_few_batches_and_get_their_own_rows() -> None:
    run = CountingRun()
    batcher = DynamicBatcher(run, BatchingPolicy(max_batch_size=16, max_queue_delay_us=200_000))
    requests = [(np.full((n, 2), i, np.float32), np.full(n, i, np.int64)) for i, n in enumerate([1, 3, 2, 5, 4, 1, 6])]
    results = await asyncio.gather(*(batcher.infer(z, labels) for z, labels in requests))
    await batcher.close()
    for (z, labels), out in zip(requests, results):
        assert out.shape == (len(z), 1, 1, 1) and np.all(out == 3 * labels[0])
    assert sum(run.sizes) == 22 and max(run.sizes) <= 16 and len(run.sizes) == 2
    assert all(name.startswith("sampling-infer") for name in run.threads)


async def test_a_preferred_size_is_sent_without_waiting_for_the_delay() -> None:
    run = CountingRun()
    batcher = DynamicBatcher(run, BatchingPolicy(max_batch_size=64, max_queue_delay_us=60_000_000, preferred_batch_sizes=(4,)))
    out = await asyncio.wait_for(
        asyncio.gather(*(batcher.infer(np.zeros((2, 2), np.float32), np.zeros(2, np.int64)) for _ in range(2))), 20
    )
    await batcher.close()
    assert run.sizes == [4] and len(out) == 2


async def test_requests_arriving_during_an_inference_form_the_next_batch() -> None:
    run = CountingRun()
    run.gate.clear()
    batcher = DynamicBatcher(run, BatchingPolicy(max_batch_size=64, max_queue_delay_us=0))
    first = asyncio.ensure_future(batcher.infer(np.zeros((1, 2), np.float32), np.zeros(1, np.int64)))
    await asyncio.sleep(0.05)  # the first inference is now blocked on the gate
    rest = [asyncio.ensure_future(batcher.infer(np.zeros((1, 2), np.float32), np.zeros(1, np.int64))) for _ in range(10)]
    await asyncio.sleep(0.05)
    run.gate.set()
    await asyncio.gather(first, *rest)
    await batcher.close()
    assert run.sizes == [1, 10]


async def test_a_cancelled_request_leaves_the_batch_and_disabled_batching_runs_alone() -> None:
    run = CountingRun()
    run.gate.clear()
    batcher = DynamicBatcher(run, BatchingPolicy(max_batch_size=64, max_queue_delay_us=0))
    blocker = asyncio.ensure_future(batcher.infer(np.zeros((1, 2), np.float32), np.zeros(1, np.int64)))
    await asyncio.sleep(0.05)
    cancelled = asyncio.ensure_future(batcher.infer(np.zeros((5, 2), np.float32), np.zeros(5, np.int64)))
    kept = asyncio.ensure_future(batcher.infer(np.zeros((2, 2), np.float32), np.zeros(2, np.int64)))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    run.gate.set()
    await asyncio.gather(blocker, kept)
    await batcher.close()
    assert run.sizes == [1, 2]

    alone = CountingRun()
    unbatched = DynamicBatcher(alone, BatchingPolicy(enabled=False, instances=2))
    await asyncio.gather(*(unbatched.infer(np.zeros((1, 2), np.float32), np.zeros(1, np.int64)) for _ in range(5)))
    await unbatched.close()
    assert alone.sizes == [1] * 5


@pytest.mark.parametrize("turns", range(6))
async def test_close_returns_when_a_request_arrives_as_the_worker_is_cancelled(turns: int) -> None:
    # The CI hang: the worker waits (with a deadline) for more requests to join a batch; one
    # arrives and close() cancels the worker in the same few loop turns. Python 3.11's wait_for
    # dropped that cancel, the worker ran on, and close() (so the server's shutdown) waited forever.
    run = CountingRun()
    batcher = DynamicBatcher(run, BatchingPolicy(max_batch_size=64, max_queue_delay_us=30_000_000))
    first = asyncio.ensure_future(batcher.infer(np.zeros((1, 2), np.float32), np.zeros(1, np.int64)))
    for _ in range(5):
        await asyncio.sleep(0)  # the worker holds `first` and waits for company
    second = asyncio.ensure_future(batcher.infer(np.zeros((1, 2), np.float32), np.zeros(1, np.int64)))
    for _ in range(turns):
        await asyncio.sleep(0)
    await asyncio.wait_for(batcher.close(), 10)
    outcomes = await asyncio.gather(first, second, return_exceptions=True)
    for outcome in outcomes:  # each request is either answered or failed as unloaded; none hangs
        assert isinstance(outcome, np.ndarray) or "unloaded" in str(outcome), outcome


class FailingRun(CountingRun):
    """A CountingRun whose calls of the sizes in ``fail`` raise."""

    def __init__(self, *fail: int) -> None:
        super().__init__()
        self.fail = set(fail)

    def __call__(self, z: np.ndarray, labels: np.ndarray, attributes: np.ndarray | None) -> np.ndarray:
        out = super().__call__(z, labels, attributes)
        if len(z) in self.fail:
            raise RuntimeError(f"no batch of {len(z)}")
        return out


async def test_inference_errors_reach_their_callers_and_a_cancelled_caller_frees_nothing_twice() -> None:
    run = FailingRun(1, 3)
    batcher = DynamicBatcher(run, BatchingPolicy(max_batch_size=64, max_queue_delay_us=0))
    with pytest.raises(RuntimeError, match="no batch of 1"):  # the direct path of a lone request
        await batcher.infer(np.zeros((1, 2), np.float32), np.zeros(1, np.int64))
    run.gate.clear()
    blocker = asyncio.ensure_future(batcher.infer(np.zeros((2, 2), np.float32), np.zeros(2, np.int64)))
    await asyncio.sleep(0.05)
    queued = [asyncio.ensure_future(batcher.infer(np.zeros((n, 2), np.float32), np.zeros(n, np.int64))) for n in (1, 2)]
    await asyncio.sleep(0.05)
    blocker.cancel()  # its inference runs on; its answer goes nowhere
    run.gate.set()
    results = await asyncio.gather(blocker, *queued, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert all(isinstance(r, RuntimeError) and "no batch of 3" in str(r) for r in results[1:])  # one batch, one error each
    out = await batcher.infer(np.zeros((4, 2), np.float32), np.full(4, 2, np.int64))  # the batcher goes on
    await batcher.close()
    assert out.shape == (4, 1, 1, 1) and np.all(out == 2) and run.sizes == [1, 2, 3, 4]
    with pytest.raises(RuntimeError, match="closed"):
        await batcher.infer(np.zeros((1, 2), np.float32), np.zeros(1, np.int64))


def test_one_pass_inputs_equal_the_reference_functions() -> None:
    idx = np.arange(1000, 1064, dtype=np.uint64)
    mixes = [(1.0, 1.0, 1.0), (0.0, 2.0)]
    for truncation in (None, 0.7):
        z, labels, attributes = noise.inputs(5, idx, 30, truncation=truncation, label_mix={1: 1.0, 4: 2.0}, num_classes=10, attribute_mixes=mixes)
        assert np.array_equal(z, noise.latents(5, idx, 30, truncation))
        assert np.array_equal(labels, noise.labels(5, idx, {1: 1.0, 4: 2.0}, 10))
        assert np.array_equal(attributes, noise.attributes(5, idx, mixes))
    _, uniform, none = noise.inputs(5, idx, 30, label_mix={}, num_classes=10)
    assert np.array_equal(uniform, noise.labels(5, idx, {}, 10)) and none is None
    assert not noise.inputs(5, idx, 30, label_mix=None, num_classes=10)[1].any()  # the caller's labels


def test_settings_come_from_the_environment() -> None:
    from simulacra_services.sampling.config import SamplingConfig

    config = SamplingConfig.from_env(
        {
            "SIMULACRA_SAMPLING_MAX_SAMPLE_COUNT": "512",
            "SIMULACRA_SAMPLING_POLL_SECONDS": "2.5",
            "SIMULACRA_SAMPLING_DYNAMIC_BATCHING": "false",
            "SIMULACRA_SAMPLING_MAX_BATCH_SIZE": "32",
            "SIMULACRA_SAMPLING_PREFERRED_BATCH_SIZES": "8,16",
            "SIMULACRA_SAMPLING_PROVIDER": "cpu",
            "SIMULACRA_SAMPLING_SPINNING": "yes",
            "SIMULACRA_SAMPLING_DEFAULT_ALIAS": "production",
        }
    )
    assert (config.max_sample_count, config.poll_seconds, config.default_alias) == (512, 2.5, "production")
    assert not config.batching.enabled and config.batching.max_batch_size == 32 and config.batching.preferred_batch_sizes == (8, 16)
    assert config.session.provider == "cpu" and config.session.spinning
    assert SamplingConfig.from_env({}) == SamplingConfig()
    with pytest.raises(ValueError):
        SamplingConfig.from_env({"SIMULACRA_SAMPLING_PREFERRED_BATCH_SIZES": "128"})  # above max_batch_size
