"""vLLM's KV cache events in this project's terms: its block hashes become our chained hashes
(kv.hashing), so the router sees vLLM and the mocker alike; vLLM's own hashes only map removals back."""

from __future__ import annotations

from typing import Any

from dynamo_cli.kv.hashing import chain_hashes, local_block_hashes
from dynamo_cli.transport.wire import KvEvent


class KvEventTranslator:
    """vLLM's BlockStored / BlockRemoved / AllBlocksCleared -> KvEvent with our chained hashes."""

    def __init__(self, block_size: int):
        self.block_size = block_size
        self._ours: dict[Any, int] = {}  # vLLM block hash -> our sequence hash
        self._next_id = 1

    def _event(self, kind: str, hashes: list[int], parent: int | None = None) -> KvEvent:
        ev = KvEvent(self._next_id, kind, hashes, parent)  # type: ignore[arg-type]
        self._next_id += 1
        return ev

    @property
    def last_event_id(self) -> int:
        return self._next_id - 1

    def cached(self) -> list[int]:
        return list(self._ours.values())

    def translate(self, raw: Any) -> list[KvEvent]:
        """One decoded vLLM event: a map with a "type" tag, or a tagged array [tag, field, ...]."""
        if isinstance(raw, dict):
            tag = raw.get("type")
            hashes, parent, token_ids = (
                raw.get("block_hashes") or [],
                raw.get("parent_block_hash"),
                raw.get("token_ids") or [],
            )
        else:
            tag = raw[0]
            hashes = raw[1] if len(raw) > 1 else []
            parent = raw[2] if len(raw) > 2 else None
            token_ids = raw[3] if len(raw) > 3 else []
        if tag == "BlockStored":
            parent_ours = self._ours.get(_key(parent), 0) if parent is not None else 0
            ours = chain_hashes(local_block_hashes(token_ids, self.block_size), parent_ours)
            for eh, oh in zip(hashes, ours, strict=False):
                self._ours[_key(eh)] = oh
            return [self._event("stored", ours, parent_ours or None)] if ours else []
        if tag == "BlockRemoved":
            gone = [h for eh in hashes if (h := self._ours.pop(_key(eh), None)) is not None]
            return [self._event("removed", gone)] if gone else []
        if tag == "AllBlocksCleared":
            self._ours.clear()
            return [self._event("cleared", [])]
        return []


def _key(h: Any) -> Any:
    return bytes(h) if isinstance(h, (bytearray, memoryview)) else h
