"""Counter-based random streams keyed by (seed, item key, op path).

Every random draw of the engine comes from a Philox generator whose *key* is
a hash of where the draw happens, never from a generator that is advanced
item after item. So the draws of item x under op "2.1" are the same whatever
batch the item arrives in, whichever worker runs it, and in whatever order:
nothing depends on how many draws were made before. The hashes are fixed for
the whole of v1 (changing them changes every stored augmentation's meaning).
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np

_U64 = struct.Struct("<Q")


def _digest(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for part in parts:
        h.update(_U64.pack(len(part)))
        h.update(part)
    return h.digest()


def item_seed(request_seed: int, key: str, copy_index: int = 0) -> int:
    """Seed of one item under SEED_POLICY_ITEM_KEY: hash(request seed, item key, copy index)."""
    return _U64.unpack(_digest(b"item", _U64.pack(request_seed % 2**64), key.encode(), _U64.pack(copy_index))[:8])[0]


def position_seed(request_seed: int, position: int) -> int:
    """Seed of one item under SEED_POLICY_POSITION: hash(request seed, position in the batch or stream)."""
    return _U64.unpack(_digest(b"position", _U64.pack(request_seed % 2**64), _U64.pack(position))[:8])[0]


class Stream:
    """The random stream of one op for one item: counter-based, keyed by (item seed, op path).

    Scalar draws (``random``, scalar ``uniform`` and ``integers``) hash (key,
    counter) with BLAKE2b: a fraction of a microsecond each, where creating a
    numpy generator costs tens. Array draws and everything else go to a Philox
    generator with the same key, created on first use.
    """

    __slots__ = ("_block", "_buffer", "_generator", "_key")

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._block = 0
        self._buffer: list[int] = []
        self._generator: np.random.Generator | None = None

    def _next64(self) -> int:
        if not self._buffer:
            # One hash of (key, block counter) gives the next eight 64-bit values.
            self._block += 1
            digest = hashlib.blake2b(self._key + _U64.pack(self._block), digest_size=64).digest()
            self._buffer = list(struct.unpack("<8Q", digest))[::-1]
        return self._buffer.pop()

    def random(self) -> float:
        """Uniform in [0, 1), 53 bits."""
        return (self._next64() >> 11) * (1.0 / 9007199254740992.0)

    def uniform(self, low: float = 0.0, high: float = 1.0, size: object = None) -> float | np.ndarray:
        if size is None and np.isscalar(low) and np.isscalar(high):
            return float(low) + (float(high) - float(low)) * self.random()
        return self.generator.uniform(low, high, size)

    def integers(self, low: int, high: int | None = None, size: object = None) -> int | np.ndarray:
        if size is not None:
            return self.generator.integers(low, high, size)
        if high is None:
            low, high = 0, low
        span = int(high) - int(low)
        if span <= 0:
            raise ValueError("high <= low")
        return int(low) + ((self._next64() * span) >> 64)

    def permutation(self, n: int) -> list[int]:
        """A uniform permutation of range(n) (Fisher-Yates)."""
        order = list(range(n))
        for i in range(n - 1, 0, -1):
            j = int(self.integers(0, i + 1))
            order[i], order[j] = order[j], order[i]
        return order

    def choice_index(self, weights: list[float]) -> int:
        """An index drawn with probability proportional to ``weights``."""
        target = self.random() * sum(weights)
        total = 0.0
        for index, weight in enumerate(weights):
            total += weight
            if target < total:
                return index
        return max(i for i, w in enumerate(weights) if w > 0)

    @property
    def generator(self) -> np.random.Generator:
        if self._generator is None:
            self._generator = np.random.Generator(np.random.Philox(key=int.from_bytes(self._key, "little")))
        return self._generator

    def __getattr__(self, name: str) -> object:
        # choice, permutation, standard_normal, ...: the Philox generator's.
        return getattr(self.generator, name)


def op_generator(seed: int, path: str) -> Stream:
    """The random stream of the op at ``path`` (e.g. ``"3"`` or ``"3.1"``) for an item seed."""
    return Stream(_digest(b"op", _U64.pack(seed % 2**64), path.encode())[:16])
