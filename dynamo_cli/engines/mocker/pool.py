"""The mocker's paged KV cache: a fixed pool of blocks with prefix caching and LRU eviction.

Pure bookkeeping, no asyncio. Every operation costs O(blocks it touches), never O(pool size).

A request's blocks live in a :class:`BlockTable`. Once a block is full it is registered in the
prefix cache under its sequence hash (``dynamo_cli.kv.hashing``) and a "stored" event goes out. A
block whose reference count drops to zero keeps its contents: it stays findable by hash and joins
the LRU queue of evictable blocks. Allocation takes never-used (or hashless) blocks first, then
evicts from the front of that queue and reports the evicted hashes in a "removed" event.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Literal

from dynamo_cli.kv.hashing import chain_hashes, local_block_hashes
from dynamo_cli.transport.wire import KvEvent

logger = logging.getLogger(__name__)

EventKind = Literal["stored", "removed", "cleared"]


class BlockTable:
    """The blocks one request holds, plus the sequence hashes of its token sequence's full blocks.

    ``hashes`` belongs to the tokens, not to the allocation: it survives :meth:`BlockPool.release`
    (preemption) so a recomputed request can find its old blocks in the cache again.
    ``num_committed`` counts the leading blocks already handled as full (registered, matched from the
    cache, or skipped as duplicates).
    """

    __slots__ = ("blocks", "hashes", "num_committed")

    def __init__(self, hashes: list[int] | None = None) -> None:
        self.blocks: list[int] = []
        self.hashes: list[int] = hashes if hashes is not None else []
        self.num_committed = 0


class BlockPool:
    """``num_blocks`` KV blocks of ``block_size`` tokens each."""

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        *,
        enable_prefix_caching: bool = True,
        on_event: Callable[[KvEvent], None] | None = None,
    ) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.on_event = on_event
        self._ref = [0] * num_blocks
        self._hash: list[int | None] = [None] * num_blocks
        # Free blocks holding nothing reusable; popped from the end, so block 0 goes first.
        self._fresh = list(range(num_blocks - 1, -1, -1))
        # Free blocks that still hold a cached hash, least recently used first.
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self._cached: dict[int, int] = {}  # sequence hash -> block id
        self._next_event_id = 1

    # -- counts ---------------------------------------------------------------------------------

    def cached_hashes(self) -> list[int]:
        """Sequence hashes of every block the prefix cache holds."""
        return list(self._cached)

    @property
    def last_event_id(self) -> int:
        return self._next_event_id - 1

    @property
    def total(self) -> int:
        return self.num_blocks

    @property
    def free(self) -> int:
        """Blocks an allocation could take: never used, hashless, or cached but unreferenced."""
        return len(self._fresh) + len(self._evictable)

    @property
    def used(self) -> int:
        """Blocks with a reference count above zero."""
        return self.num_blocks - self.free

    @property
    def cached(self) -> int:
        """Blocks registered in the prefix cache, in use or not."""
        return len(self._cached)

    def ref_count(self, block: int) -> int:
        return self._ref[block]

    def block_hash(self, block: int) -> int | None:
        return self._hash[block]

    # -- operations -----------------------------------------------------------------------------

    def match(self, hashes: Sequence[int], max_blocks: int | None = None) -> list[int]:
        """Block ids of the longest cached prefix of ``hashes`` (at most ``max_blocks``); no refs taken."""
        if not self.enable_prefix_caching:
            return []
        limit = len(hashes) if max_blocks is None else min(max_blocks, len(hashes))
        out: list[int] = []
        cached = self._cached
        for i in range(limit):
            block = cached.get(hashes[i])
            if block is None:
                break
            out.append(block)
        return out

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def allocate(self, table: BlockTable, num_tokens: int, prefix: Sequence[int] = ()) -> bool:
        """Grow ``table`` to hold ``num_tokens`` token slots; all or nothing.

        ``prefix`` (from :meth:`match`, only for an empty table) are cached blocks to share: they are
        referenced first, then fresh blocks are added. Returns False, changing nothing, if the pool
        cannot supply enough blocks.
        """
        if prefix and table.blocks:
            raise ValueError("a prefix can only be attached to an empty block table")
        have = len(table.blocks) + len(prefix)
        need = self.blocks_for(num_tokens) - have
        # Cached prefix blocks that are currently free stop being allocatable once referenced.
        reclaimed = sum(1 for b in prefix if self._ref[b] == 0)
        if need > self.free - reclaimed:
            return False
        if prefix:
            for b in prefix:
                if self._ref[b] == 0:
                    del self._evictable[b]
                self._ref[b] += 1
            table.blocks.extend(prefix)
            table.num_committed = len(prefix)
        if need > 0:
            table.blocks.extend(self._take(need))
        return True

    def _take(self, n: int) -> list[int]:
        fresh = self._fresh
        out: list[int] = []
        evicted: list[int] = []
        for _ in range(n):
            if fresh:
                b = fresh.pop()
            else:
                b, _ = self._evictable.popitem(last=False)
                h = self._hash[b]
                if h is not None:
                    del self._cached[h]
                    self._hash[b] = None
                    evicted.append(h)
            self._ref[b] = 1
            out.append(b)
        if evicted:
            self._emit("removed", evicted)
        return out

    def commit(self, table: BlockTable, tokens: Sequence[int], num_computed: int) -> None:
        """Register the blocks of ``table`` that are full now that ``num_computed`` tokens have KV.

        ``tokens`` is the request's whole token sequence (prompt, then outputs). Hashes missing from
        ``table.hashes`` (blocks filled by output tokens) are computed and appended. Consecutive newly
        registered blocks go out as one "stored" event; a block whose hash another block already
        holds is left unregistered.
        """
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        full = min(num_computed // bs, len(table.blocks))
        start = table.num_committed
        if full <= start:
            return
        hashes = table.hashes
        while len(hashes) < full:
            i = len(hashes)
            parent = hashes[i - 1] if i else 0
            hashes.extend(chain_hashes(local_block_hashes(tokens[i * bs : (i + 1) * bs], bs), parent))
        run_start = -1
        for i in range(start, full):
            h = hashes[i]
            if h in self._cached:  # another block holds these tokens already
                if run_start >= 0:
                    self._emit_stored(table, tokens, run_start, i)
                    run_start = -1
                continue
            b = table.blocks[i]
            self._cached[h] = b
            self._hash[b] = h
            if run_start < 0:
                run_start = i
        if run_start >= 0:
            self._emit_stored(table, tokens, run_start, full)
        table.num_committed = full

    def release(self, table: BlockTable) -> None:
        """Drop the table's references. Tail blocks go first so they are evicted before the prefix."""
        for b in reversed(table.blocks):
            ref = self._ref[b] - 1
            self._ref[b] = ref
            if ref == 0:
                if self._hash[b] is None:
                    self._fresh.append(b)
                else:
                    self._evictable[b] = None
        table.blocks = []
        table.num_committed = 0

    def clear(self) -> None:
        """Forget every cached hash and emit "cleared".

        Free cached blocks become fresh; blocks in use keep serving their requests but are no longer
        shared, so the router's view ("nothing cached") stays true.
        """
        for b in self._evictable:
            self._fresh.append(b)
        self._evictable.clear()
        for b in self._cached.values():
            self._hash[b] = None
        self._cached.clear()
        self._emit("cleared", [])

    # -- events ---------------------------------------------------------------------------------

    def _emit_stored(self, table: BlockTable, tokens: Sequence[int], lo: int, hi: int) -> None:
        bs = self.block_size
        parent = table.hashes[lo - 1] if lo else None
        self._emit("stored", table.hashes[lo:hi], parent, list(tokens[lo * bs : hi * bs]))

    def _emit(
        self, kind: EventKind, hashes: list[int], parent: int | None = None, tokens: list[int] | None = None
    ) -> None:
        event = KvEvent(
            event_id=self._next_event_id,
            kind=kind,
            block_hashes=hashes,
            parent_hash=parent,
            token_ids=tokens if tokens is not None else [],
        )
        self._next_event_id += 1
        sink = self.on_event
        if sink is None:
            return
        try:
            sink(event)
        except Exception:
            logger.exception("KV event sink failed on event %d", event.event_id)
