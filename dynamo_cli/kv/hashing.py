"""Block hashing: the one implementation shared by frontend, router and engines.

A prompt is cut into full blocks of ``block_size`` tokens (a trailing partial block is never hashed).
Each block gets a *local* hash, XXH3-64 (seed 1337) of its token ids as little-endian u32, and a
*sequence* hash chained over its parent: XXH3-64 of (parent sequence hash, local hash) as two
little-endian u64. The sequence hash identifies a block together with everything before it, so two
requests share a block only if they share the whole prefix up to it.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

import xxhash

HASH_SEED = 1337
_ROOT = 0  # parent hash of the first block

_xxh = xxhash.xxh3_64_intdigest


def _u32le(tokens: Sequence[int]) -> bytes:
    buf = array("I", tokens)
    if buf.itemsize != 4:  # pragma: no cover - every platform we run on has 4-byte unsigned int
        raise RuntimeError("array('I') is not 32-bit on this platform")
    return buf.tobytes()  # native order; all supported platforms are little-endian


def local_block_hashes(tokens: Sequence[int], block_size: int) -> list[int]:
    """Local hash of each full block of ``tokens``."""
    n_full = len(tokens) // block_size
    if n_full == 0:
        return []
    raw = _u32le(tokens[: n_full * block_size])
    step = block_size * 4
    return [_xxh(raw[i : i + step], HASH_SEED) for i in range(0, n_full * step, step)]


def chain_hashes(local_hashes: Sequence[int], parent: int = _ROOT) -> list[int]:
    """Sequence hashes for consecutive blocks whose local hashes are given."""
    out = []
    for h in local_hashes:
        parent = _xxh(parent.to_bytes(8, "little") + h.to_bytes(8, "little"), HASH_SEED)
        out.append(parent)
    return out


def sequence_block_hashes(tokens: Sequence[int], block_size: int) -> list[int]:
    """Sequence hash of each full block of ``tokens``: what the router and engines key on."""
    return chain_hashes(local_block_hashes(tokens, block_size))
