"""The vLLM engine: AsyncLLM in the worker process (imported only here, only when used).

Token ids in (TokensPrompt), token-id deltas out (RequestOutputKind.DELTA, no detokenisation: the
frontend does that). vLLM's own KV cache events arrive on a local ZMQ socket and are translated into
this project's block hashes (kv.hashing), so the router sees vLLM and the mocker alike: vLLM's block
hashes are only used as ids to map removals back to ours.

Disaggregated serving (``cfg.disagg.remote_prefill``) runs vLLM's NixlConnector: a prefill request
({"do_remote_decode": True}) ends with the params a decode engine needs; a decode request carrying them
pulls the prompt's KV over NIXL. A transfer that cannot work never fails the request: the decode engine
prefills locally instead (see ``vllm_nixl.PullPlanner`` and ``VllmEngine._outputs``). On CPU two vLLM
defaults are changed, both measured on 2 cores: one core reserved instead of none, and a NIXL progress
thread that sleeps between events instead of spinning (see ``vllm_nixl``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

from dynamo_cli.config.models import DynamoConfig
from dynamo_cli.engines import kv_block_size
from dynamo_cli.engines.base import Engine, KvEventSink
from dynamo_cli.engines.vllm_kv_events import KvEventTranslator
from dynamo_cli.engines.vllm_nixl import (
    PullPlanner,
    kv_transfer_config,
    lease_running_out,
    prefill_result,
)
from dynamo_cli.engines.vllm_outputs import FINISH, prompt_logprobs, refusal, token_logprobs
from dynamo_cli.engines.vllm_sampling import sampling_params, warm_up
from dynamo_cli.errors import StartupError
from dynamo_cli.kv.fallbacks import FALLBACKS, KV_LEASE, PREFILL_TIMEOUT, TRANSFER
from dynamo_cli.transport.wire import EngineOutput, EngineRequest, LoadMetrics

logger = logging.getLogger(__name__)

WORKER_EXTENSION = "dynamo_cli.engines.vllm_worker_ext.DynamoWorkerExtension"
HANDSHAKE_TIMEOUT_S = 15.0  # vLLM gives up on a side channel that does not answer after 5 s


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


class VllmEngine(Engine):
    def __init__(self, cfg: DynamoConfig, model_path: Path, *, seed: int = 0):
        self.cfg = cfg
        self.model_path = model_path
        self.seed = seed
        self.on_gpu = cuda_available()
        self.block_size = kv_block_size(cfg, self.on_gpu)
        self._engine: Any = None
        self._load = LoadMetrics(0, 0, 0, 1)
        self._total_blocks = 1
        self._tasks: list[asyncio.Task[None]] = []
        self._translator = KvEventTranslator(self.block_size)
        self._dead: asyncio.Future[str] | None = None
        self._zmq_ctx: Any = None
        self._zmq_sock: Any = None
        self._active: set[str] = set()
        # Disaggregated serving: vLLM's NixlConnector when cfg.disagg.remote_prefill.
        self.disagg = cfg.disagg.remote_prefill
        # KV bytes of one block of the whole model (all layers, K and V): a transfer moved
        # num_remote_blocks(params) * kv_bytes_per_block bytes. Known once started.
        self.kv_bytes_per_block = 0
        self.side_channel: tuple[str, int] | None = None  # (host, port) decode engines handshake with
        # Since start, from vLLM's stats: what NIXL moved (bytes, transfers, failed: transfers and
        # handshakes that failed, each then recomputed locally), and the prompt tokens this engine got
        # over the wire (tokens_pulled) or computed itself (tokens_computed).
        self.kv_transfer_totals = dict.fromkeys(
            ("bytes", "transfers", "failed", "tokens_pulled", "tokens_computed"), 0
        )
        self._pulls = PullPlanner(cfg)

    async def start(self, on_kv_event: KvEventSink | None = None) -> None:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.cfg.vllm.cpu_kv_cache_gib))
        try:
            from vllm import AsyncEngineArgs
            from vllm.config import KVEventsConfig
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as e:
            raise StartupError(
                "the vLLM engine is not installed",
                hint="run scripts/install.sh --vllm (or use --engine mocker)",
            ) from e
        # vLLM's publisher connects to a tcp endpoint that is not a wildcard: we bind (loopback only,
        # before the engine starts, so no event is published into the void) and it connects to us.
        endpoint = self._bind_event_socket() if on_kv_event else None
        kwargs: dict[str, Any] = {
            "model": str(self.model_path),
            "enable_prefix_caching": True,
            "block_size": self.block_size,
            "seed": self.seed,
            "enforce_eager": not self.on_gpu or self.cfg.vllm.enforce_eager,
            "tensor_parallel_size": self.cfg.vllm.tensor_parallel_size or self._gpu_share(),
        }
        if self.cfg.vllm.max_model_len:
            kwargs["max_model_len"] = self.cfg.vllm.max_model_len
        if endpoint:
            kwargs["kv_events_config"] = KVEventsConfig(
                enable_kv_cache_events=True, publisher="zmq", endpoint=endpoint, topic="kv"
            )
        if self.disagg:
            kwargs["kv_transfer_config"], self.side_channel = kv_transfer_config(self.cfg, self.on_gpu)
            kwargs["worker_extension_cls"] = WORKER_EXTENSION
        kwargs.update(self.cfg.vllm.extra_args)
        engine = self

        class _Stats:  # a vLLM stat logger: scheduler stats -> our load metrics
            def __init__(self, vllm_config: Any, engine_index: int = 0):
                cache = vllm_config.cache_config
                engine._total_blocks = int(getattr(cache, "num_gpu_blocks", None) or 1)

            def record(self, scheduler_stats: Any, iteration_stats: Any, *args: Any, **kw: Any) -> None:
                if scheduler_stats is not None and scheduler_stats.kv_connector_stats:
                    engine._count_transfers(scheduler_stats.kv_connector_stats)
                if engine.disagg and iteration_stats is not None:
                    prompt = iteration_stats.prompt_token_stats
                    engine.kv_transfer_totals["tokens_pulled"] += prompt.external_kv_transfer
                    engine.kv_transfer_totals["tokens_computed"] += prompt.computed
                if scheduler_stats is not None:
                    total = engine._total_blocks
                    engine._load = LoadMetrics(
                        scheduler_stats.num_running_reqs,
                        scheduler_stats.num_waiting_reqs,
                        round(scheduler_stats.kv_cache_usage * total),
                        total,
                    )

            def log_engine_initialized(self) -> None:
                return None

            def log(self) -> None:
                return None

            def record_sleep_state(self, *args: Any) -> None:
                return None

        try:
            self._engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs), stat_loggers=[_Stats])  # type: ignore[list-item]
        except Exception as e:
            raise StartupError(
                f"vLLM could not load {self.model_path.name}: {e}", hint="see the lines above"
            ) from e
        self.kv_bytes_per_block = self._block_bytes()
        await warm_up(self._engine)
        self._dead = asyncio.get_running_loop().create_future()
        self._tasks.append(asyncio.create_task(self._watch_health(), name="vllm-health"))
        if endpoint and on_kv_event:
            self._tasks.append(
                asyncio.create_task(self._relay_events(endpoint, on_kv_event), name="vllm-kv-events")
            )

    def kv_peer(self) -> dict[str, Any] | None:
        if not self.disagg or self.side_channel is None or self._engine is None:
            return None
        vc = self._engine.vllm_config
        host, port = self.side_channel
        return {
            "engine_id": vc.kv_transfer_config.engine_id,
            "host": host,
            "port": port,
            "tp_size": vc.parallel_config.tensor_parallel_size,
        }

    async def handshake(self, peer: dict[str, Any]) -> None:
        """vLLM's NIXL handshake with a prefill engine, done now rather than by the first request
        that needs it (which would wait for it, or fail with it)."""
        if not self.disagg:
            return
        args = (str(peer["engine_id"]), str(peer["host"]), int(peer["port"]), int(peer.get("tp_size", 1)))
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT_S
        while True:
            status = (await self._engine.collective_rpc("dynamo_nixl_handshake", args=args))[0]
            if status == "done":
                return
            if status != "pending":
                raise RuntimeError(f"NIXL handshake with {peer['host']}:{peer['port']}: {status}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"NIXL handshake with {peer['host']}:{peer['port']} took over "
                                   f"{HANDSHAKE_TIMEOUT_S:g} s")  # fmt: skip
            await asyncio.sleep(0.05)

    async def forget(self, peer: dict[str, Any]) -> None:
        if self.disagg and self._engine is not None:
            await self._engine.collective_rpc("dynamo_nixl_forget", args=(str(peer["engine_id"]),))

    def _block_bytes(self) -> int:
        try:
            from vllm.utils.torch_utils import get_kv_cache_torch_dtype

            vc = self._engine.vllm_config
            mc = vc.model_config
            dtype = get_kv_cache_torch_dtype(vc.cache_config.cache_dtype, mc.dtype)
            per_token = (
                mc.get_total_num_hidden_layers() * 2 * mc.get_total_num_kv_heads() * mc.get_head_size()
            )
            return int(per_token * dtype.itemsize * vc.cache_config.block_size)
        except Exception:  # an exotic model (MLA, hybrid): unknown rather than wrong
            logger.warning("cannot tell this model's KV bytes per block", exc_info=True)
            return 0

    def _count_transfers(self, data: dict[str, Any]) -> None:
        totals = self.kv_transfer_totals
        totals["bytes"] += int(sum(data.get("bytes_transferred", ())))
        totals["transfers"] += len(data.get("bytes_transferred", ()))
        totals["failed"] += sum(
            len(data.get(k, ())) for k in ("num_failed_transfers", "num_failed_handshakes")
        )

    def _gpu_share(self) -> int:
        """GPUs this worker was given (its CUDA_VISIBLE_DEVICES), 1 on CPU."""
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        return len([g for g in visible.split(",") if g.strip()]) if self.on_gpu and visible else 1

    async def _watch_health(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            if self._engine is not None and self._engine.errored:
                if self._dead is not None and not self._dead.done():
                    self._dead.set_result(f"the vLLM engine died: {self._engine.dead_error}")
                return

    async def wait_dead(self) -> str:
        assert self._dead is not None
        return await self._dead

    def _bind_event_socket(self) -> str:
        import zmq
        import zmq.asyncio

        self._zmq_ctx = zmq.asyncio.Context()
        self._zmq_sock = self._zmq_ctx.socket(zmq.SUB)
        self._zmq_sock.setsockopt(zmq.SUBSCRIBE, b"kv")
        self._zmq_sock.bind("tcp://127.0.0.1:0")
        return str(self._zmq_sock.getsockopt_string(zmq.LAST_ENDPOINT))

    async def _relay_events(self, endpoint: str, sink: KvEventSink) -> None:
        import msgpack

        sock, ctx = self._zmq_sock, self._zmq_ctx
        try:
            while True:
                _topic, _seq, payload = await sock.recv_multipart()
                batch = msgpack.unpackb(payload, raw=False, strict_map_key=False)
                for raw in batch[1]:
                    try:
                        events = self._translator.translate(raw)
                    except (IndexError, KeyError, TypeError, ValueError):
                        logger.warning("skipping a KV event vLLM sent that we cannot read: %r", raw)
                        continue
                    for ev in events:
                        sink(ev)
        finally:
            sock.close(linger=0)
            ctx.term()

    def _stream(self, request: EngineRequest, kv: dict[str, Any] | None) -> AsyncIterator[Any]:
        from vllm.inputs import TokensPrompt

        params = sampling_params(request.sampling, kv)
        prompt = TokensPrompt(prompt_token_ids=request.prompt_token_ids)
        return self._engine.generate(prompt, params, request.request_id).__aiter__()  # type: ignore[no-any-return]

    async def _outputs(
        self, request: EngineRequest, kv: dict[str, Any] | None, info: dict[str, Any] | None
    ) -> AsyncGenerator[Any, None]:
        """vLLM's outputs. vLLM waits forever on a pull that never completes: one that brings no
        output within disagg.prefill_timeout_s is dropped and the prompt prefilled here instead."""
        stream = self._stream(request, kv)
        if info is not None and info["kv_transfer"] == "nixl":
            timeout = self.cfg.disagg.prefill_timeout_s
            try:
                first = await asyncio.wait_for(anext(stream), timeout)
            except asyncio.TimeoutError:  # cancelling the stream aborted its vLLM request
                why = f"no KV from the prefill engine within {timeout:g} s"
                FALLBACKS.note(PREFILL_TIMEOUT, f"request {request.request_id}: {why}")
                info.clear()
                info.update(kv_transfer="local", cause=PREFILL_TIMEOUT, reason=why)
                stream = self._stream(request, None)
            except StopAsyncIteration:
                return
            else:
                self._check_pulled(request, kv, first, info)
                yield first
        async for out in stream:
            yield out

    def _check_pulled(
        self, request: EngineRequest, kv: dict[str, Any] | None, first: Any, info: dict[str, Any]
    ) -> None:
        """Did the decode engine take the prompt's KV over? A pull computes (and caches) at most the
        prompt's last block; more means vLLM computed the prompt itself: its scheduler refused the pull
        (the lease check where the pull starts, which logs why) or the load failed (vLLM recomputes)."""
        created = getattr(first, "num_cache_creation_tokens", 0) or 0
        if created <= self.block_size:
            return
        if lease_running_out(kv or {}) is not None:
            cause, why = KV_LEASE, "the KV lease was over or nearly where the pull would start"
        else:
            cause, why = TRANSFER, "vLLM could not load the prefill's KV and computed the prompt itself"
            FALLBACKS.note(cause, f"request {request.request_id}: {why}")
        info.clear()
        info.update(kv_transfer="local", cause=cause, reason=why)

    async def generate(self, request: EngineRequest) -> AsyncGenerator[EngineOutput, None]:
        rid, s = request.request_id, request.sampling
        kv, info = await self._pulls.plan(request, self.kv_bytes_per_block)
        first = True
        finished = False
        self._active.add(rid)
        try:
            async with contextlib.aclosing(self._outputs(request, kv, info)) as outputs:
                async for out in outputs:
                    was_first, first = first, False
                    o = out.outputs[0]
                    reason = FINISH.get(o.finish_reason) if o.finish_reason else None
                    finished = reason is not None
                    result = EngineOutput(list(o.token_ids), reason)
                    if s.logprobs is not None:
                        result.logprobs = [
                            token_logprobs(t, e, s.logprobs)
                            for t, e in zip(result.token_ids, o.logprobs or (), strict=True)
                        ]
                    if was_first:
                        result.cached_tokens = out.num_cached_tokens or 0
                        result.disagg = info
                        if s.prompt_logprobs is not None and out.prompt_logprobs is not None:
                            result.prompt_logprobs = prompt_logprobs(
                                request.prompt_token_ids, out.prompt_logprobs, s.prompt_logprobs
                            )
                    if reason == "error":
                        result.error = "vLLM failed the request"
                        if s.structured:  # vLLM compiles a grammar after taking the request
                            result.error += " (its structured-output constraint may not compile: see the log)"
                    if finished and kv is not None and kv.get("do_remote_decode") and out.kv_transfer_params:
                        result.kv_transfer_params = prefill_result(
                            request, out.kv_transfer_params, self.cfg.disagg.kv_lease_s
                        )
                    yield result
        except Exception as e:
            if type(e).__name__ == "EngineDeadError":
                finished = True
                yield EngineOutput([], "error", error=str(e))
                return
            refused = refusal(e) if first else None
            if refused is None:
                raise
            finished = True  # vLLM never took it: nothing to abort
            logger.info("vLLM refused request %s: %s", rid, refused)
            yield EngineOutput([], "error", error=f"vLLM refused the request: {refused}")
        finally:
            self._active.discard(rid)
            if not finished:  # the caller went away (or we failed): free the request's blocks
                with contextlib.suppress(Exception):
                    await self._engine.abort(rid)

    async def abort(self, request_id: str) -> None:
        await self._engine.abort(request_id)

    async def reset_prefix_cache(self) -> bool:
        """Drop every cached block that no request holds (benchmarks and tests that need a cold
        cache). False if vLLM refused (blocks still in use)."""
        return bool(await self._engine.reset_prefix_cache())

    def load(self) -> LoadMetrics:
        # vLLM reports stats only while it steps: once idle, its last report would stand forever.
        if not self._active:
            return LoadMetrics(0, 0, 0, self._total_blocks)
        return self._load

    def kv_state(self) -> tuple[list[int], int] | None:
        return self._translator.cached(), self._translator.last_event_id

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._engine is not None:
            with contextlib.suppress(Exception):
                self._engine.shutdown()
            self._engine = None
