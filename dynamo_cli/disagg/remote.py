"""A decode worker's side of disaggregated serving: decide where a prompt is prefilled, and if remotely,
queue the work, wait for it and take the KV over.

The decision is seed 001's rule. A request is prefilled remotely iff ``remote_prefill`` is on and
(``conditional_disagg`` is off, or its uncached prompt is longer than ``max_local_prefill_length`` and
fewer than ``max_prefill_queue_size`` prefills are queued or running). The uncached length uses this
worker's own prefix cache, known from its engine's KV events. Whatever goes wrong on the remote path
(no prefill worker, a timeout, a failed prefill or transfer) ends in a local prefill, never a failed
request; the outcome and its reason travel to the frontend with the first output, for its metrics.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

from dynamo_cli.config.models import DynamoConfig
from dynamo_cli.engines.base import Engine
from dynamo_cli.kv.fallbacks import FALLBACKS, HANDSHAKE
from dynamo_cli.kv.hashing import sequence_block_hashes
from dynamo_cli.transport import prefill_queue as pq
from dynamo_cli.transport.discovery import DiscoveryEvent, EtcdDiscovery
from dynamo_cli.transport.messaging import NatsRequestPlane
from dynamo_cli.transport.ports import advertised_host
from dynamo_cli.transport.wire import EngineRequest, KvEvent
from dynamo_cli.transport.workers import InstanceSet

logger = logging.getLogger(__name__)

PREFILL = "prefill"  # the discovery component of prefill workers

# Outcomes: "remote" (prefilled by a prefill worker), "local" (by choice), "fallback" (remote was
# chosen or needed but did not happen).
LOCAL, REMOTE, FALLBACK = "local", "remote", "fallback"
START_HANDSHAKES_S = 20.0  # how long a starting decode worker waits for its first handshakes
HANDSHAKE_RETRY_S = 0.5  # first wait after a failed handshake; doubles up to 10 s
ARENA_WAIT_S = 2.0  # how long a stage or a fetch waits for room in a worker's transfer arena


@dataclass(slots=True)
class Decision:
    outcome: str
    reason: str
    prompt_tokens: int
    uncached_tokens: int
    info: dict[str, Any] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "reason": self.reason, **self.info}


def encode_peer(metadata: dict[str, Any]) -> dict[str, Any]:
    """Transfer metadata as JSON can hold it (discovery values are JSON): bytes become base64."""
    return {
        k: {"b64": base64.b64encode(v).decode()} if isinstance(v, bytes) else v for k, v in metadata.items()
    }


def decode_peer(data: dict[str, Any]) -> dict[str, Any]:
    return {
        k: base64.b64decode(v["b64"]) if isinstance(v, dict) and "b64" in v else v for k, v in data.items()
    }


async def open_transfer(cfg: DynamoConfig, name: str) -> Any:
    """The KvTransferAgent of a mocker worker; None with vLLM, whose connector moves the KV itself."""
    if cfg.engine != "mocker":
        return None
    from dynamo_cli.kv.transfer import KvTransferAgent

    return await KvTransferAgent.create(
        name,
        backend=cfg.disagg.transfer,
        arena_bytes=cfg.disagg.transfer_arena_mib << 20,
        host=advertised_host(cfg.infra.nats, cfg.frontend.host),  # the TCP path, across machines too
    )


def staged_block_hashes(token_ids: list[int], skip: int, end: int, block_size: int) -> list[int]:
    """The hashes stamped on the KV bytes of tokens [skip, end) (skip is block-aligned): both sides
    compute them, so bytes of another prompt or another range are caught."""
    return sequence_block_hashes(token_ids[:end], block_size)[skip // block_size :]


class CachedPrefixes:
    """The sequence hashes this worker's engine caches, from its own KV events."""

    def __init__(self, block_size: int):
        self.block_size = block_size
        self._hashes: set[int] = set()

    def on_event(self, event: KvEvent) -> None:
        if event.kind == "stored":
            self._hashes.update(event.block_hashes)
        elif event.kind == "removed":
            self._hashes.difference_update(event.block_hashes)
        else:
            self._hashes.clear()

    def hit_tokens(self, token_ids: list[int]) -> int:
        hit = 0
        for h in sequence_block_hashes(token_ids, self.block_size):
            if h not in self._hashes:
                break
            hit += 1
        return hit * self.block_size


class RemotePrefill:
    def __init__(
        self,
        cfg: DynamoConfig,
        plane: NatsRequestPlane,
        discovery: EtcdDiscovery,
        engine: Engine,
        *,
        kv_bytes_per_token: int,
    ):
        self.cfg = cfg
        self.d = cfg.disagg
        self.plane = plane
        self.discovery = discovery
        self.engine = engine
        self.transfer: Any = None  # a KvTransferAgent (mocker) or None (vLLM moves the KV itself)
        self.kv_bytes_per_token = kv_bytes_per_token
        self.cache = CachedPrefixes(engine.block_size)
        self.prefills = InstanceSet()
        self.queue: pq.PrefillQueue | None = None
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._reply = pq.done_subject(cfg.namespace, discovery.instance_id)
        self._unsubscribe: Any = None
        # Prefill workers whose engines this worker's engine has handshaken with: remote prefill only
        # once it has with every live one (prefill work is a shared queue: any of them may take it).
        self.handshaken: set[int] = set()
        self._handshakes: dict[int, asyncio.Task[None]] = {}
        # Reading the depth and queueing is one step per worker: concurrent requests must not all
        # see the same short queue and all go remote.
        self._queue_lock = asyncio.Lock()

    async def start(self, name: str) -> None:
        self.transfer = await open_transfer(self.cfg, name)
        self.queue = await pq.PrefillQueue.open(
            self.plane.nc, self.cfg.namespace, redelivery_s=self.d.redelivery_s
        )
        self._unsubscribe = await self.plane.subscribe(self._reply, self._on_done)
        self.prefills.reset(await self.discovery.watch(PREFILL, self._on_prefill))
        for iid in self.prefills.ids():
            inst = self.prefills.get(iid)
            if inst is not None:
                self._handshake_soon(iid, inst.data)
        if self._handshakes:  # before this worker is announced: its first requests may go remote
            await asyncio.wait(list(self._handshakes.values()), timeout=START_HANDSHAKES_S)

    async def close(self) -> None:
        for task in self._handshakes.values():
            task.cancel()
        if self._unsubscribe is not None:
            with contextlib.suppress(Exception):
                await self._unsubscribe()
        for fut in self._waiting.values():
            if not fut.done():
                fut.cancel()
        if self.transfer is not None:
            with contextlib.suppress(Exception):
                await self.transfer.close()

    # ---- handshakes -----------------------------------------------------------------------------------
    def _on_prefill(self, event: DiscoveryEvent) -> None:
        self.prefills.on_event(event)
        iid, data = event.instance.instance_id, event.instance.data
        if event.kind != "delete":
            self._handshake_soon(iid, data)
            return
        self.handshaken.discard(iid)
        task = self._handshakes.pop(iid, None)
        if task is not None:
            task.cancel()
        if data.get("kv_peer"):
            forget = asyncio.ensure_future(self.engine.forget(data["kv_peer"]))
            forget.add_done_callback(lambda f: f.cancelled() or f.exception())

    def _handshake_soon(self, iid: int, data: dict[str, Any]) -> None:
        peer = data.get("kv_peer")
        if peer is None:  # the mocker moves KV itself: nothing to handshake
            self.handshaken.add(iid)
        elif iid not in self.handshaken and iid not in self._handshakes:
            self._handshakes[iid] = asyncio.ensure_future(self._handshake(iid, peer))

    async def _handshake(self, iid: int, peer: dict[str, Any]) -> None:
        """Handshake with a prefill worker's engine until it works or the worker leaves, then tell it
        (it takes no work before every live decode worker has)."""
        delay = HANDSHAKE_RETRY_S
        try:
            while self.prefills.get(iid) is not None:
                try:
                    await self.engine.handshake(peer)
                except Exception as e:
                    logger.warning(
                        "handshake with prefill worker %x (%s:%s) failed (%s); retrying in %g s",
                        iid, peer.get("host"), peer.get("port"), e, delay,
                    )  # fmt: skip
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
                    continue
                self.handshaken.add(iid)
                logger.info(
                    "handshaken with prefill worker %x (%s:%s)", iid, peer.get("host"), peer.get("port")
                )
                me = f"{self.discovery.instance_id:x}".encode()
                with contextlib.suppress(Exception):
                    await self.plane.publish(pq.handshake_subject(self.cfg.namespace, iid), me)
                return
        finally:
            self._handshakes.pop(iid, None)

    # ---- deciding -------------------------------------------------------------------------------------
    async def decide(self, request: EngineRequest) -> Decision:
        d = self.d
        n = len(request.prompt_token_ids)
        uncached = n - self.cache.hit_tokens(request.prompt_token_ids)

        def made(outcome: str, reason: str) -> Decision:
            return Decision(outcome, reason, n, uncached)

        if not d.remote_prefill:
            return made(LOCAL, "remote_prefill_off")
        if request.sampling.prompt_logprobs is not None:  # vLLM recomputes such a prompt whatever it got
            return made(LOCAL, "prompt_logprobs")
        if d.conditional_disagg and uncached <= d.max_local_prefill_length:
            return made(LOCAL, "prefix_cached" if n > d.max_local_prefill_length else "short_prompt")
        live = self.prefills.ids()
        if not live:
            return made(FALLBACK, "no_prefill_worker")
        if not self.handshaken.issuperset(live):
            pending = ", ".join(f"{i:x}" for i in live if i not in self.handshaken)
            FALLBACKS.note(HANDSHAKE, f"request {request.request_id}: not handshaken yet with {pending}")
            return made(FALLBACK, HANDSHAKE)
        if d.conditional_disagg:
            assert self.queue is not None
            try:
                depth = await self.queue.depth()
            except Exception as e:  # JetStream trouble must not fail the request
                logger.warning("cannot read the prefill queue depth (%s); prefilling locally", e)
                return made(FALLBACK, "queue_error")
            if depth >= d.max_prefill_queue_size:
                return made(LOCAL, "queue_full")
            return made(REMOTE, "long_uncached")
        return made(REMOTE, "always_remote")

    # ---- the remote path ------------------------------------------------------------------------------
    async def prepare(self, request: EngineRequest) -> tuple[EngineRequest, Decision]:
        """The request to give the engine (with the prefill's KV params when remote) and why."""
        t0 = time.perf_counter()
        try:
            async with self._queue_lock:
                decision = await self.decide(request)
                if decision.outcome != REMOTE:
                    return request, decision
                waiter = await self._enqueue(request, decision.prompt_tokens - decision.uncached_tokens)
            params = await self._remote(request, waiter, decision)
        except _Fallback as e:
            FALLBACKS.note(e.reason, f"request {request.request_id}: {e}")
            decision.outcome, decision.reason = FALLBACK, e.reason
            return request, decision
        decision.info["remote_s"] = round(time.perf_counter() - t0, 6)
        return replace(request, kv_transfer_params=params), decision

    async def _enqueue(self, request: EngineRequest, cached: int) -> asyncio.Future[dict[str, Any]]:
        assert self.queue is not None
        rid = request.request_id
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        s = request.sampling
        deadline = time.time() + self.d.prefill_timeout_s
        work = pq.PrefillWork(
            rid, request.prompt_token_ids, self._reply, deadline, s.temperature, s.seed, skip_tokens=cached
        )
        try:
            await self.queue.put(work)
        except Exception as e:
            self._waiting.pop(rid, None)
            raise _Fallback("queue_error", str(e)) from e
        return fut

    async def _remote(
        self, request: EngineRequest, fut: asyncio.Future[dict[str, Any]], decision: Decision
    ) -> dict[str, Any]:
        rid = request.request_id
        timeout = self.d.prefill_timeout_s
        try:
            result = await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise _Fallback("prefill_timeout", f"no prefill result within {timeout:g} s") from None
        finally:
            self._waiting.pop(rid, None)
        if not result.get("ok"):
            raise _Fallback("prefill_failed", str(result.get("error")))
        decision.info["prefill_worker"] = f"{result['peer']:x}"
        decision.info["prefill_s"] = result.get("prefill_s")
        params: dict[str, Any] = result["kv"]
        if self.transfer is None:  # vLLM: the decode engine pulls the blocks itself (NIXL) and
            return params  # reports how many on its first output
        await self._take_kv(rid, request.prompt_token_ids, result, params, decision)
        decision.info["kv_tokens"] = int(result.get("kv_tokens", 0))
        return params

    async def _take_kv(
        self,
        rid: str,
        token_ids: list[int],
        result: dict[str, Any],
        params: dict[str, Any],
        decision: Decision,
    ) -> None:
        """Mocker: read the prefill worker's staged KV bytes into ours, check them, let it free them."""
        from dynamo_cli.kv.transfer import TransferError, check_stamps, when_room

        peer_id = int(result["peer"])
        inst = self.prefills.get(peer_id)
        try:
            if inst is None or "transfer" not in inst.data:
                raise _Fallback("transfer_failed", f"prefill worker {peer_id:x} is gone")
            peer = decode_peer(inst.data["transfer"])
            try:
                fetched = await when_room(
                    lambda: self.transfer.fetch(peer, result["desc"], timeout=self.d.prefill_timeout_s),
                    ARENA_WAIT_S,
                )
            except TransferError as e:
                raise _Fallback("transfer_failed", str(e)) from e
            try:
                skip, end = int(result["skip_tokens"]), int(params["remote_tokens"])
                tokens = end - skip
                bs = self.engine.block_size
                hashes = staged_block_hashes(token_ids, skip, end, bs)
                if not check_stamps(fetched.view, hashes, bs * self.kv_bytes_per_token):
                    raise _Fallback("transfer_failed", "the KV bytes that arrived are not the prompt's")
                if fetched.result.nbytes != max(1, tokens * self.kv_bytes_per_token):  # 1: none to move
                    raise _Fallback(
                        "transfer_failed", f"got {fetched.result.nbytes} bytes for {tokens} tokens"
                    )
            finally:
                fetched.release()
            decision.info["kv_bytes"] = fetched.result.nbytes
            decision.info["kv_s"] = round(fetched.result.seconds, 6)
            decision.info["kv_backend"] = fetched.result.backend
        finally:
            with contextlib.suppress(Exception):
                await self.plane.publish(pq.release_subject(self.cfg.namespace, peer_id), rid.encode())

    async def _on_done(self, data: bytes) -> None:
        rid, result = pq.decode_done(data)
        fut = self._waiting.get(rid)
        if fut is not None and not fut.done():
            fut.set_result(result)
        elif result.get("ok") and "desc" in result:  # late or duplicate: the staged copy can go
            await self.plane.publish(
                pq.release_subject(self.cfg.namespace, int(result["peer"])), rid.encode()
            )


class _Fallback(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
