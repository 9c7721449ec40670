"""Counter-based noise: the latent vector, label and attributes of sample i of (seed), as pure functions.

Every random number of sample ``i`` comes from Philox4x32-10 (Salmon et al., "Parallel random
numbers: as easy as 1, 2, 3", SC 2011; the Random123 reference) keyed by the seed, with the sample
index in the counter. Nothing depends on which other samples are drawn in the same call, so a
sample is the same whatever batch, start index, transport or process asks for it. The algorithm is
specified in docs/contracts.md ("Deterministic sampling") precisely enough to be re-implemented:
keep the two in step.

Counter words, for block ``j`` of sample ``i`` (64-bit), purpose ``p`` and redraw round ``r``:
``(i mod 2^32, i div 2^32, j, p * 2^16 + r)``; key words ``(seed mod 2^32, seed div 2^32)``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np

PURPOSE_LATENT = 0
PURPOSE_LABEL = 1
PURPOSE_ATTRIBUTE = 2
MAX_REDRAW_ROUNDS = 0xFFFF
"""Rounds of truncation redraw; a coordinate still outside after them is clamped to +-truncation."""

_MULTIPLIERS = np.array([[0xD2511F53], [0xCD9E8D57]], dtype=np.uint64)
_W0 = 0x9E3779B9
_W1 = 0xBB67AE85
_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
_TWO_POW_32 = 4294967296.0


def philox4x32(counter: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """Philox4x32-10 of ``counter`` (uint64 array [..., 4] holding 32-bit words) under ``key``.

    Returns the four output words as uint64 [..., 4] (each < 2^32). Vectorised over the leading axes.
    """
    rows = np.ascontiguousarray(counter.reshape(-1, 4).T, dtype=np.uint64)
    return np.ascontiguousarray(_philox_rows(rows, key).T).reshape(counter.shape)


@functools.lru_cache(maxsize=1024)
def _round_keys(k0: int, k1: int) -> np.ndarray:
    """The ten round keys of a key, uint64 [10, 2, 1] (column vectors against the (c0, c2) rows)."""
    keys = np.empty((10, 2, 1), dtype=np.uint64)
    for round_ in range(10):
        keys[round_, 0, 0] = (k0 + round_ * _W0) & 0xFFFFFFFF
        keys[round_, 1, 0] = (k1 + round_ * _W1) & 0xFFFFFFFF
    return keys


def _philox_rows(rows: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """Philox4x32-10 of counters given as rows: uint64 [4, N] (row w: word w of every counter) -> [4, N].

    Words 0 and 2 go through the multipliers together, words 1 and 3 are xored in together, so a
    round is five numpy operations whatever N is (small calls pay numpy's fixed cost per operation).
    """
    keys = _round_keys(int(key[0]) & 0xFFFFFFFF, int(key[1]) & 0xFFFFFFFF)
    even, odd = rows[0::2], rows[1::2]  # (c0, c2), (c1, c3)
    for round_ in range(10):
        product = _MULTIPLIERS * even  # (M0 c0, M1 c2)
        # c0' = hi(M1 c2) ^ c1 ^ k0, c2' = hi(M0 c0) ^ c3 ^ k1; c1' = lo(M1 c2), c3' = lo(M0 c0)
        odd, even = (product & _MASK32)[::-1], (product >> _SHIFT32)[::-1] ^ odd ^ keys[round_]
    out = np.empty(rows.shape, dtype=np.uint64)
    out[0::2] = even
    out[1::2] = odd
    return out


def _key(seed: int) -> tuple[int, int]:
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2^64), got {seed}")
    return seed & 0xFFFFFFFF, seed >> 32


def _counters(indices: np.ndarray, blocks: np.ndarray, purpose: int, rounds: np.ndarray | int = 0) -> np.ndarray:
    """Counter words [len(indices), 4] for element-wise (index, block, round)."""
    idx = indices.astype(np.uint64)
    out = np.empty((idx.shape[0], 4), dtype=np.uint64)
    out[:, 0] = idx & _MASK32
    out[:, 1] = idx >> _SHIFT32
    out[:, 2] = blocks.astype(np.uint64)
    out[:, 3] = np.uint64(purpose << 16) + np.asarray(rounds, dtype=np.uint64)
    return out


def _uniform(words: np.ndarray) -> np.ndarray:
    """32-bit words to float64 uniforms in (0, 1): (x + 0.5) / 2^32 (never 0 or 1)."""
    return (words.astype(np.float64) + 0.5) / _TWO_POW_32


def _normals(words: np.ndarray) -> np.ndarray:
    """Box-Muller of each block's words (x0, x1, x2, x3) -> 4 normals [..., 4] (float64).

    n0 = r cos(2 pi u1), n1 = r sin(2 pi u1) with r = sqrt(-2 ln u0), u = uniform(x0), uniform(x1);
    n2, n3 likewise from x2, x3.
    """
    u = _uniform(words)
    out = np.empty(words.shape, dtype=np.float64)
    for a, b in ((0, 1), (2, 3)):
        radius = np.sqrt(-2.0 * np.log(u[..., a]))
        angle = (2.0 * np.pi) * u[..., b]
        out[..., a] = radius * np.cos(angle)
        out[..., b] = radius * np.sin(angle)
    return out


def latents(seed: int, indices: np.ndarray, latent_dim: int, truncation: float | None = None) -> np.ndarray:
    """z [len(indices), latent_dim] float32 of the given sample indices.

    Coordinate k of sample i is normal n[k mod 4] of block k div 4 (purpose 0, round 0), computed in
    float64 and rounded to float32. With ``truncation`` t, a coordinate with |z| > t (float64) is
    replaced by the same coordinate drawn in round 1, 2, ... until |z| <= t.
    """
    indices = np.asarray(indices, dtype=np.uint64)
    key = _key(seed)
    n = indices.shape[0]
    blocks = (latent_dim + 3) // 4
    sample_of = np.repeat(indices, blocks)
    block_of = np.tile(np.arange(blocks, dtype=np.uint64), n)
    z = _normals(philox4x32(_counters(sample_of, block_of, PURPOSE_LATENT), key)).reshape(n, blocks * 4)[:, :latent_dim]
    if truncation is not None:
        if not truncation > 0:
            raise ValueError(f"truncation must be > 0, got {truncation}")
        z = np.ascontiguousarray(z)
        row, col = np.nonzero(np.abs(z) > truncation)
        round_ = 1
        while row.size and round_ <= MAX_REDRAW_ROUNDS:
            words = philox4x32(_counters(indices[row], (col // 4).astype(np.uint64), PURPOSE_LATENT, round_), key)
            fresh = _normals(words)[np.arange(row.size), col % 4]
            z[row, col] = fresh
            keep = np.abs(fresh) > truncation
            row, col = row[keep], col[keep]
            round_ += 1
        if row.size:
            z[row, col] = np.copysign(truncation, z[row, col])
    return z.astype(np.float32)


def draw_categorical(seed: int, indices: np.ndarray, purpose: int, block: int, weights: Sequence[float]) -> np.ndarray:
    """Index into ``weights`` drawn for each sample: the smallest k with u * W < c_k.

    u = uniform(x0) of block ``block`` (round 0) of ``purpose``; c_k = w_0 + ... + w_k summed left to
    right in float64, W = c_last. Zero weights are never drawn.
    """
    w = np.asarray(weights, dtype=np.float64)
    cumulative = np.cumsum(w)
    total = cumulative[-1]
    indices = np.asarray(indices, dtype=np.uint64)
    words = philox4x32(_counters(indices, np.full(indices.shape[0], block, dtype=np.uint64), purpose), _key(seed))
    target = _uniform(words[:, 0]) * total
    chosen = np.searchsorted(cumulative, target, side="right")
    last_positive = int(np.nonzero(w > 0)[0][-1])
    return np.minimum(chosen, last_positive).astype(np.int64)


def labels(seed: int, indices: np.ndarray, mix: Mapping[int, float], num_classes: int) -> np.ndarray:
    """Labels int64 drawn from ``mix`` (label -> weight; empty: uniform over ``num_classes``).

    Categories are the labels in ascending order (block 0 of purpose 1); 0 for unconditional generators.
    """
    indices = np.asarray(indices, dtype=np.uint64)
    if num_classes <= 0:
        return np.zeros(indices.shape[0], dtype=np.int64)
    keys = sorted(mix) if mix else list(range(num_classes))
    weights = [mix[k] for k in keys] if mix else [1.0] * num_classes
    chosen = draw_categorical(seed, indices, PURPOSE_LABEL, 0, weights)
    return np.asarray(keys, dtype=np.int64)[chosen]


def attributes(seed: int, indices: np.ndarray, mixes: Sequence[Sequence[float]]) -> np.ndarray:
    """Attribute value indices int64 [len(indices), len(mixes)]: attribute a from block a of purpose 2.

    ``mixes[a]`` holds one weight per value of attribute a, in the signature's value order.
    """
    indices = np.asarray(indices, dtype=np.uint64)
    out = np.zeros((indices.shape[0], len(mixes)), dtype=np.int64)
    for a, weights in enumerate(mixes):
        out[:, a] = draw_categorical(seed, indices, PURPOSE_ATTRIBUTE, a, weights)
    return out


@functools.lru_cache(maxsize=1024)
def _cumulative(weights: tuple[float, ...]) -> tuple[np.ndarray, int]:
    """Cumulative weights (float64, summed left to right) and the last category with a weight > 0."""
    w = np.asarray(weights, dtype=np.float64)
    return np.cumsum(w), int(np.nonzero(w > 0)[0][-1])


def _categorical_from_words(x0: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    cumulative, last_positive = _cumulative(tuple(weights))
    chosen = np.searchsorted(cumulative, _uniform(x0) * cumulative[-1], side="right")
    return np.minimum(chosen, last_positive).astype(np.int64)


@functools.lru_cache(maxsize=256)
def _label_table(mix: tuple[tuple[int, float], ...], num_classes: int) -> tuple[np.ndarray, tuple[float, ...]]:
    """The labels in ascending order and their weights (``mix`` empty: uniform over ``num_classes``)."""
    keys = [k for k, _ in mix] if mix else list(range(num_classes))
    weights = tuple(w for _, w in mix) if mix else (1.0,) * num_classes
    return np.asarray(keys, dtype=np.int64), weights


@functools.lru_cache(maxsize=256)
def _sample_blocks(blocks: int, draw_label: bool, attributes: int) -> tuple[np.ndarray, np.ndarray]:
    """Counter words 2 (block) and 3 (purpose << 16) of one sample's blocks: its latent blocks, then
    its label block, then one block per attribute."""
    label = 1 if draw_label else 0
    block_ids = np.concatenate([np.arange(blocks), np.zeros(label), np.arange(attributes)]).astype(np.uint64)
    purposes = np.concatenate([np.full(blocks, PURPOSE_LATENT), np.full(label, PURPOSE_LABEL), np.full(attributes, PURPOSE_ATTRIBUTE)])
    return block_ids, purposes.astype(np.uint64) << np.uint64(16)


def inputs(
    seed: int,
    indices: np.ndarray,
    latent_dim: int,
    *,
    truncation: float | None = None,
    label_mix: Mapping[int, float] | None = None,
    num_classes: int = 0,
    attribute_mixes: Sequence[Sequence[float]] = (),
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(z, labels, attributes) of ``latents``, ``labels`` and ``attributes`` at once: the same
    numbers, with one Philox pass over every block (the fixed numpy cost of small calls is paid
    once, and what depends only on the spec is cached). ``label_mix`` None means the caller gives
    the labels (zeros returned here)."""
    indices = np.asarray(indices, dtype=np.uint64)
    n = indices.shape[0]
    key = _key(seed)
    blocks = (latent_dim + 3) // 4
    draw_label = label_mix is not None and num_classes > 0
    block_ids, purposes = _sample_blocks(blocks, draw_label, len(attribute_mixes))
    per_sample = block_ids.shape[0]
    rows = np.empty((4, n, per_sample), dtype=np.uint64)  # counter word, sample, block
    rows[0] = (indices & _MASK32)[:, None]
    rows[1] = (indices >> _SHIFT32)[:, None]
    rows[2] = block_ids
    rows[3] = purposes
    words = np.ascontiguousarray(_philox_rows(rows.reshape(4, n * per_sample), key).T).reshape(n, per_sample, 4)
    if truncation is not None:
        # rare redraws: the reference path, on the coordinates outside only
        cut = latents(seed, indices, latent_dim, truncation)
    else:
        cut = _normals(words[:, :blocks]).reshape(n, blocks * 4)[:, :latent_dim].astype(np.float32)
    labels_out = np.zeros(n, dtype=np.int64)
    if draw_label:
        keys, weights = _label_table(tuple(sorted(label_mix.items())) if label_mix else (), num_classes)
        labels_out = keys[_categorical_from_words(words[:, blocks, 0], weights)]
    attrs = None
    if attribute_mixes:
        first = blocks + (1 if draw_label else 0)
        attrs = np.stack([_categorical_from_words(words[:, first + a, 0], w) for a, w in enumerate(attribute_mixes)], axis=1)
    return cut, labels_out, attrs
