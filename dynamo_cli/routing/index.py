"""Which workers hold which prefixes: an index over chained block hashes, fed by KV events.

Block hashes are *sequence* hashes (kv.hashing): each one identifies a block together with every
block before it. So a flat map hash -> holders answers exactly what a radix tree over the blocks
would: a worker's overlap with a prompt is the number of leading blocks it holds without a gap.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class KvIndex:
    def __init__(self) -> None:
        self._holders: dict[int, set[int]] = {}
        self._by_worker: dict[int, set[int]] = {}

    def __len__(self) -> int:
        """Blocks indexed, counted once per (worker, block)."""
        return sum(len(b) for b in self._by_worker.values())

    def workers(self) -> list[int]:
        return list(self._by_worker)

    def blocks_of(self, worker: int) -> int:
        return len(self._by_worker.get(worker, ()))

    def store(self, worker: int, block_hashes: Iterable[int]) -> None:
        mine = self._by_worker.setdefault(worker, set())
        holders = self._holders
        for h in block_hashes:
            s = holders.get(h)
            if s is None:
                holders[h] = {worker}
            else:
                s.add(worker)
            mine.add(h)

    def remove(self, worker: int, block_hashes: Iterable[int]) -> None:
        mine = self._by_worker.get(worker)
        if mine is None:
            return
        holders = self._holders
        for h in block_hashes:
            s = holders.get(h)
            if s is not None:
                s.discard(worker)
                if not s:
                    del holders[h]
            mine.discard(h)

    def clear(self, worker: int) -> None:
        """Forget everything a worker holds (a 'cleared' event, a resync, or the worker left)."""
        holders = self._holders
        for h in self._by_worker.pop(worker, ()):
            s = holders.get(h)
            if s is not None:
                s.discard(worker)
                if not s:
                    del holders[h]

    def overlaps(self, block_hashes: Sequence[int]) -> dict[int, int]:
        """For each worker holding the first block: how many leading blocks of the prompt it holds."""
        if not block_hashes:
            return {}
        holders = self._holders
        first = holders.get(block_hashes[0])
        if not first:
            return {}
        active = set(first)
        out: dict[int, int] = {}
        depth = 1
        for depth, h in enumerate(block_hashes[1:], start=1):
            s = holders.get(h)
            if s is None:
                break
            if not active <= s:
                for w in active - s:
                    out[w] = depth
                active &= s
                if not active:
                    break
        else:
            depth = len(block_hashes)
        for w in active:
            out[w] = depth
        return out
