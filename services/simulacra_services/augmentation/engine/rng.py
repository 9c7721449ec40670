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


def op_generator(seed: int, path: str) -> np.random.Generator:
    """The random stream of the op at ``path`` (e.g. ``"3"`` or ``"3.1"``) for an item seed."""
    key = int.from_bytes(_digest(b"op", _U64.pack(seed % 2**64), path.encode())[:16], "little")
    return np.random.Generator(np.random.Philox(key=key))
