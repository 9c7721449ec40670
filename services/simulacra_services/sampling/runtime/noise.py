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

from collections.abc import Mapping, Sequence

import numpy as np

PURPOSE_LATENT = 0
PURPOSE_LABEL = 1
PURPOSE_ATTRIBUTE = 2
MAX_REDRAW_ROUNDS = 0xFFFF
"""Rounds of truncation redraw; a coordinate still outside after them is clamped to +-truncation."""

_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = 0x9E3779B9
_W1 = 0xBB67AE85
_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
_TWO_POW_32 = 4294967296.0


def philox4x32(counter: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """Philox4x32-10 of ``counter`` (uint64 array [..., 4] holding 32-bit words) under ``key``.

    Returns the four output words as uint64 [..., 4] (each < 2^32). Vectorised over the leading axes.
    """
    c0, c1, c2, c3 = (counter[..., w].astype(np.uint64) for w in range(4))
    k0, k1 = int(key[0]) & 0xFFFFFFFF, int(key[1]) & 0xFFFFFFFF
    for round_ in range(10):
        if round_:
            k0 = (k0 + _W0) & 0xFFFFFFFF
            k1 = (k1 + _W1) & 0xFFFFFFFF
        p0 = _M0 * c0
        p1 = _M1 * c2
        c0, c1, c2, c3 = (
            (p1 >> _SHIFT32) ^ c1 ^ np.uint64(k0),
            p1 & _MASK32,
            (p0 >> _SHIFT32) ^ c3 ^ np.uint64(k1),
            p0 & _MASK32,
        )
    return np.stack([c0, c1, c2, c3], axis=-1)


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


def _categorical_from_words(x0: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    cumulative = np.cumsum(w)
    chosen = np.searchsorted(cumulative, _uniform(x0) * cumulative[-1], side="right")
    return np.minimum(chosen, int(np.nonzero(w > 0)[0][-1])).astype(np.int64)


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
    once). ``label_mix`` None means the caller gives the labels (zeros returned here)."""
    indices = np.asarray(indices, dtype=np.uint64)
    n = indices.shape[0]
    key = _key(seed)
    blocks = (latent_dim + 3) // 4
    draw_label = label_mix is not None and num_classes > 0
    extra = (1 if draw_label else 0) + len(attribute_mixes)
    per_sample = blocks + extra
    sample_of = np.repeat(indices, per_sample)
    block_ids = np.concatenate([np.arange(blocks), np.zeros(1 if draw_label else 0), np.arange(len(attribute_mixes))]).astype(np.uint64)
    purposes = np.concatenate(
        [np.full(blocks, PURPOSE_LATENT), np.full(1 if draw_label else 0, PURPOSE_LABEL), np.full(len(attribute_mixes), PURPOSE_ATTRIBUTE)]
    ).astype(np.uint64)
    counters = np.empty((n * per_sample, 4), dtype=np.uint64)
    counters[:, 0] = sample_of & _MASK32
    counters[:, 1] = sample_of >> _SHIFT32
    counters[:, 2] = np.tile(block_ids, n)
    counters[:, 3] = np.tile(purposes << np.uint64(16), n)
    words = philox4x32(counters, key).reshape(n, per_sample, 4)
    z = _normals(words[:, :blocks]).reshape(n, blocks * 4)[:, :latent_dim]
    if truncation is not None:
        # rare redraws: the reference path, on the coordinates outside only
        cut = latents(seed, indices, latent_dim, truncation)
    else:
        cut = z.astype(np.float32)
    labels_out = np.zeros(n, dtype=np.int64)
    if draw_label:
        keys = sorted(label_mix) if label_mix else list(range(num_classes))
        weights = [label_mix[k] for k in keys] if label_mix else [1.0] * num_classes
        labels_out = np.asarray(keys, dtype=np.int64)[_categorical_from_words(words[:, blocks, 0], weights)]
    attrs = None
    if attribute_mixes:
        first = blocks + (1 if draw_label else 0)
        attrs = np.stack([_categorical_from_words(words[:, first + a, 0], w) for a, w in enumerate(attribute_mixes)], axis=1)
    return cut, labels_out, attrs
