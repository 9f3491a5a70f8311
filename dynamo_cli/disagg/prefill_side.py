"""A prefill worker's side of disaggregated serving: pull prefill work from the JetStream queue, compute
the prompt's KV, and hand it to the decode worker that asked.

With vLLM the engine keeps the KV and returns the NixlConnector's params (the decode engine pulls the
blocks itself). With the mocker the worker stages the prompt's simulated KV bytes (layers x 2 x KV
heads x head dim x dtype bytes per token, each block stamped with its hash) in a host arena the decode
worker reads over NIXL, or over TCP without it. Work is acked only once its result is out: a prefill
worker that dies mid-prefill leaves the work to be redelivered to another one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from dynamo_cli.config.models import DynamoConfig
from dynamo_cli.disagg.remote import ARENA_WAIT_S, staged_block_hashes
from dynamo_cli.engines.base import Engine
from dynamo_cli.transport import prefill_queue as pq
from dynamo_cli.transport import protocol
from dynamo_cli.transport.discovery import EtcdDiscovery
from dynamo_cli.transport.messaging import NatsRequestPlane
from dynamo_cli.transport.wire import EngineOutput, EngineRequest, SamplingOptions
from dynamo_cli.transport.workers import InstanceSet

logger = logging.getLogger(__name__)

MAX_IN_FLIGHT = 8  # prefills one worker takes from the queue at once (the engine batches them)
HANDSHAKE_WAIT_S = 30.0  # how long a new prefill worker waits for the live decode workers' handshakes


class PrefillServer:
    """Serves prefill work for one prefill worker: pulls it from the queue (up to MAX_IN_FLIGHT at once,
    kept claimed while it runs), prefills it, stages the mocker's KV for transfer and frees it when the
    decode worker says so (or after ``prefill_timeout_s``), and publishes each result to the decode
    worker that asked. With vLLM it takes no work before the live decode engines have handshaken with
    its engine.

    Its owner builds the engine, the transfer agent (None with vLLM) and the queue puller, and closes
    them after this: ``listen`` before the worker is announced in discovery, ``start`` after,
    ``stop_accepting`` and ``drain`` to stop, then ``close``.
    """

    def __init__(
        self,
        cfg: DynamoConfig,
        plane: NatsRequestPlane,
        discovery: EtcdDiscovery,
        engine: Engine,
        transfer: Any,
        puller: pq.Puller,
        *,
        kv_bytes_per_token: int,
    ):
        self.cfg = cfg
        self.plane = plane
        self.discovery = discovery
        self.engine = engine
        self.transfer = transfer
        self.kv_bytes_per_token = kv_bytes_per_token
        self._puller = puller
        self._staged: dict[str, Any] = {}  # request id -> staged KV region (mocker)
        self._task: asyncio.Task[None] | None = None
        self._work: set[asyncio.Task[None]] = set()
        self._busy: set[str] = set()  # request ids being prefilled here
        self._accepting = True
        self._unsubscribe: Any = None
        self._unsubscribe_acks: Any = None
        self._peer: dict[str, Any] | None = None
        self._acks: set[int] = set()  # decode workers that handshook with this engine
        self._acked = asyncio.Event()

    async def listen(self) -> dict[str, Any]:
        """Subscribe to this worker's release and handshake subjects, before it is announced; returns
        what its discovery record adds (the engine's ``kv_peer``, for decode engines to handshake with)."""
        iid = self.discovery.instance_id
        self._unsubscribe = await self.plane.subscribe(
            pq.release_subject(self.cfg.namespace, iid), self._on_release
        )
        self._peer = self.engine.kv_peer()
        if self._peer is None:
            return {}
        # decode engines handshake with this one before it takes work
        self._unsubscribe_acks = await self.plane.subscribe(
            pq.handshake_subject(self.cfg.namespace, iid), self._on_ack
        )
        return {"kv_peer": self._peer}

    async def start(self) -> None:
        """Once announced: wait for the handshakes (vLLM), then pull work."""
        if self._peer is not None:
            await self._await_handshakes(self._acks, self._acked)
        self._task = asyncio.create_task(self._pull(), name="prefill-pull")

    async def _on_ack(self, data: bytes) -> None:
        with contextlib.suppress(ValueError):
            self._acks.add(int(data.decode(), 16))
            self._acked.set()

    async def _await_handshakes(self, acks: set[int], acked: asyncio.Event) -> None:
        """Take no work before every live decode worker has handshaken with this engine (work is a
        shared queue: any decode worker's request may come here). A decode worker that has not within
        HANDSHAKE_WAIT_S is not waited for: it sends no remote work before it has."""
        decodes = InstanceSet()
        decodes.reset(await self.discovery.watch(protocol.WORKER, decodes.on_event))
        deadline = time.monotonic() + HANDSHAKE_WAIT_S
        while not acks.issuperset(decodes.ids()) and time.monotonic() < deadline:
            acked.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(acked.wait(), 0.2)
        missing = [f"{i:x}" for i in decodes.ids() if i not in acks]
        if missing:
            logger.warning(
                "decode worker(s) %s did not handshake within %g s; pulling prefill work anyway",
                ", ".join(missing), HANDSHAKE_WAIT_S,
            )  # fmt: skip
        else:
            logger.info("handshaken by %d decode worker(s); pulling prefill work", len(acks))

    # ---- work ---------------------------------------------------------------------------------------
    async def _pull(self) -> None:
        slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        while self._accepting:
            await slots.acquire()
            try:
                msg = await self._puller.next(wait_s=0.5)
            except Exception as e:  # NATS hiccup: keep pulling
                logger.warning("pulling prefill work failed: %s", e)
                msg = None
                await asyncio.sleep(0.5)
            if msg is None:
                slots.release()
                continue
            task = asyncio.create_task(self._handle(msg))
            self._work.add(task)
            task.add_done_callback(self._work.discard)
            task.add_done_callback(lambda _t: slots.release())

    async def _handle(self, msg: Any) -> None:
        try:
            work = pq.PrefillWork.decode(msg.data)
        except Exception:  # not ours to retry
            logger.error("dropping a prefill work item that cannot be read")
            await msg.term()
            return
        if time.time() > work.deadline:  # its decode worker gave up and prefilled locally
            await msg.ack()
            return
        if work.request_id in self._busy:  # redelivered while we still work on it: that copy acks
            return
        self._busy.add(work.request_id)
        t0 = time.perf_counter()
        alive = asyncio.create_task(self._keep_claimed(msg))
        try:
            result = await self._prefill(work)
        except Exception as e:  # tell the decode worker at once rather than time out
            logger.exception("prefill of %s failed", work.request_id)
            result = {"ok": False, "error": str(e)}
        finally:
            alive.cancel()
            self._busy.discard(work.request_id)
        result["peer"] = self.discovery.instance_id
        result["prefill_s"] = round(time.perf_counter() - t0, 6)
        await self.plane.publish(work.reply, pq.encode_done(work.request_id, result))
        await msg.ack()  # after the result is out: dying before this means redelivery

    async def _keep_claimed(self, msg: Any) -> None:
        """A prefill longer than the redelivery time must not be handed to another worker meanwhile."""
        while True:
            await asyncio.sleep(self.cfg.disagg.redelivery_s / 3)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _prefill(self, work: pq.PrefillWork) -> dict[str, Any]:
        request = EngineRequest(
            f"{work.request_id}-prefill",
            work.token_ids,
            SamplingOptions(max_tokens=1, temperature=work.temperature, seed=work.seed),
            kv_transfer_params={"do_remote_decode": True},
        )
        last: EngineOutput | None = None
        async for out in self.engine.generate(request):
            last = out
        if last is None or last.error or last.kv_transfer_params is None:
            return {"ok": False, "error": (last.error if last else None) or "the engine kept no KV"}
        params = last.kv_transfer_params
        if self.transfer is None:  # vLLM: the decode engine pulls the blocks (and counts them)
            return {"ok": True, "kv": params}
        end = int(params["remote_tokens"])
        # What the decode worker lacks, from a block boundary (it may have cached less since it asked).
        bs = self.engine.block_size
        skip = min(work.skip_tokens // bs * bs, end // bs * bs)
        desc = await self._stage(work, skip, end)
        return {"ok": True, "kv": params, "desc": desc, "skip_tokens": skip, "kv_tokens": end - skip}

    async def _stage(self, work: pq.PrefillWork, skip: int, end: int) -> dict[str, Any]:
        """Mocker: put the KV bytes of tokens [skip, end) where the decode worker can read them."""
        from dynamo_cli.kv.transfer import stamp_blocks, when_room

        bs = self.engine.block_size
        nbytes = max(1, (end - skip) * self.kv_bytes_per_token)
        staged = await when_room(lambda: self.transfer.stage(nbytes), ARENA_WAIT_S)
        hashes = staged_block_hashes(work.token_ids, skip, end, bs)
        stamp_blocks(staged.view, hashes, bs * self.kv_bytes_per_token)
        old = self._staged.pop(work.request_id, None)
        if old is not None:
            old.release()
        self._staged[work.request_id] = staged
        # If the decode worker never says it is done (it died, or gave up), free the region anyway.
        asyncio.get_running_loop().call_later(
            self.cfg.disagg.prefill_timeout_s, self._release, work.request_id, staged
        )
        descriptor: dict[str, Any] = staged.descriptor
        return descriptor

    def _release(self, request_id: str, staged: Any = None) -> None:
        current = self._staged.get(request_id)
        if current is not None and (staged is None or current is staged):
            del self._staged[request_id]
            current.release()

    async def _on_release(self, data: bytes) -> None:
        self._release(data.decode())

    # ---- stopping -----------------------------------------------------------------------------------
    def stop_accepting(self) -> None:
        """Pull no more work (what was pulled is finished)."""
        self._accepting = False

    async def drain(self) -> None:
        """Finish the prefills in flight, within ``supervisor.stop_timeout_s``."""
        if self._work:
            logger.info("finishing %d prefill(s)", len(self._work))
            await asyncio.wait(set(self._work), timeout=self.cfg.supervisor.stop_timeout_s)

    async def close(self) -> None:
        """Stop pulling, unsubscribe and free the staged KV; the owner then closes the puller, the
        transfer agent and the engine."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for unsubscribe in (self._unsubscribe, self._unsubscribe_acks):
            if unsubscribe is not None:
                with contextlib.suppress(Exception):
                    await unsubscribe()
        for staged in self._staged.values():
            staged.release()
        self._staged.clear()
