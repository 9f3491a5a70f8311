"""The contract between a worker role and its engine (vLLM or the mocker).

An engine takes token ids and streams deltas of new token ids per request (the wire types, in
``transport.wire``), and reports KV cache events and load, which the worker publishes for the router.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from dynamo_cli.transport.wire import EngineOutput, EngineRequest, KvEvent, LoadMetrics

KvEventSink = Callable[[KvEvent], None]


class Engine(abc.ABC):
    """An inference engine that takes token ids and streams token ids."""

    block_size: int

    @abc.abstractmethod
    async def start(self, on_kv_event: KvEventSink | None = None) -> None:
        """Bring the engine up. KV events are delivered to ``on_kv_event`` from the event loop."""

    @abc.abstractmethod
    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        """Stream outputs; the last one has a finish_reason. Cancelling the iteration aborts it."""

    @abc.abstractmethod
    async def abort(self, request_id: str) -> None:
        """Stop a request and free its blocks; its stream ends with finish_reason "abort"."""

    @abc.abstractmethod
    def load(self) -> LoadMetrics:
        """Current load, cheap enough to call per request."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop the engine; in-flight streams end with finish_reason "abort"."""

    async def wait_dead(self) -> str:
        """Return (with the reason) only if the engine dies; the worker then exits to be restarted."""
        await asyncio.Future()
        raise AssertionError("unreachable")

    def kv_state(self) -> tuple[list[int], int] | None:
        """Every cached block's sequence hash and the id of the last KV event emitted, for a router
        that lost track (a gap in event ids). None: this engine cannot tell."""
        return None

    def kv_peer(self) -> dict[str, Any] | None:
        """Disaggregated serving, on a prefill engine: what a decode engine handshakes with before it
        sends this engine work (JSON-able, published in discovery). None: nothing to handshake."""
        return None

    async def handshake(self, peer: dict[str, Any]) -> None:
        """Disaggregated serving, on a decode engine: be ready to pull KV from a prefill engine
        (``peer`` is its kv_peer()); raise if that cannot be."""
        return None

    async def forget(self, peer: dict[str, Any]) -> None:
        """Disaggregated serving, on a decode engine: a prefill engine handshaken with has left."""
        return None
