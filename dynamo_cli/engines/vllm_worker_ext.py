"""Methods vLLM mixes into its worker class (``worker_extension_cls``), for ``AsyncLLM.collective_rpc``.

They run in the engine's worker process, on its main thread, between engine steps. Imported by vLLM
only (by name), never by this package.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any


class DynamoWorkerExtension:
    """NIXL handshakes started before any request needs them (a decode engine with each live prefill
    engine, as discovery announces them), so that no request pays for one or fails one."""

    _dynamo_handshakes: dict[str, Future[Any]]

    def dynamo_nixl_handshake(self, engine_id: str, host: str, port: int, tp_size: int) -> str:
        """Start, or look at, this engine's NIXL handshake with a prefill engine's side channel:
        "done", "pending", "failed: why", or "no connector"."""
        from vllm.distributed.kv_transfer.kv_transfer_state import (
            get_kv_transfer_group,
            has_kv_transfer_group,
        )

        if not has_kv_transfer_group():
            return "no connector"
        worker = getattr(get_kv_transfer_group(), "connector_worker", None)
        if worker is None:
            return "no connector"
        pending = self.__dict__.setdefault("_dynamo_handshakes", {})
        fut = pending.get(engine_id)
        if fut is not None:
            if not fut.done():
                return "pending"
            del pending[engine_id]
            error = fut.exception()
            if error is not None:
                return f"failed: {error}"
            return "done"
        started = worker._ensure_handshake(engine_id, host, port, tp_size)
        if started is None:  # handshaken already
            return "done"
        pending[engine_id] = started
        return "pending"

    def dynamo_nixl_forget(self, engine_id: str) -> str:
        """Drop what this engine keeps of a prefill engine that left (vLLM's own eviction is off):
        "forgotten", "busy" (a read from it is in flight: kept) or "unknown"."""
        from vllm.distributed.kv_transfer.kv_transfer_state import (
            get_kv_transfer_group,
            has_kv_transfer_group,
        )

        worker = (
            getattr(get_kv_transfer_group(), "connector_worker", None) if has_kv_transfer_group() else None
        )
        if worker is None or engine_id not in worker._remote_agents:
            return "unknown"
        if engine_id in worker._engines_with_inflight_transfers():
            return "busy"
        worker._cleanup_remote_engine(engine_id, log_eviction=False)
        return "forgotten"
