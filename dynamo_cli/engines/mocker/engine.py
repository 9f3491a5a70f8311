"""MockerEngine: a GPU-free engine with a vLLM-like scheduler, a real block pool and a timing model.

One asyncio task runs the scheduler while there is work and waits on an event when there is none.
Each step: running requests get their next tokens scheduled first (one per decoding request, the
next chunk for a request still prefilling), preempting the most recently admitted request when the
pool runs dry; then waiting requests are admitted in FIFO order while ``max_num_seqs``, the token
budget and the pool allow. The step sleeps for the simulated duration, then every request whose
scheduled tokens complete its sequence samples one token and has it delivered.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import TYPE_CHECKING

from dynamo_cli.config.models import MockerConfig
from dynamo_cli.engines.base import Engine, KvEventSink
from dynamo_cli.engines.mocker.pool import BlockPool
from dynamo_cli.engines.mocker.request import DONE, RUNNING, WAITING, Request
from dynamo_cli.engines.mocker.sampling import TokenSampler, grammar_sampler
from dynamo_cli.engines.mocker.timing import Clock, LoopClock, TimingModel
from dynamo_cli.kv.hashing import sequence_block_hashes
from dynamo_cli.transport.wire import EngineOutput, EngineRequest, FinishReason, LoadMetrics

if TYPE_CHECKING:
    from dynamo_cli.engines.structured import GrammarSampler

logger = logging.getLogger(__name__)


class MockerEngine(Engine):
    """A simulated engine (see docs/mocker.md).

    ``vocab_size`` and ``eos_token_ids`` come from the model (``cfg.vocab_size`` overrides the
    former); ``instance_seed`` seeds unseeded sampling, so a worker's run is reproducible.
    ``model_path``: the model folder, whose tokenizer structured output needs (without it, structured
    requests fail with an error). ``clock``: what a step's modelled duration is waited out on (default:
    the event loop's clock, so steps take real time; tests pass a fake one).
    """

    def __init__(
        self,
        cfg: MockerConfig,
        *,
        vocab_size: int,
        eos_token_ids: list[int],
        instance_seed: int = 0,
        model_path: Path | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.cfg = cfg
        self._clock: Clock = clock if clock is not None else LoopClock()
        self._model_path = model_path
        self.block_size = cfg.block_size
        self._sampler = TokenSampler(cfg, vocab_size, eos_token_ids, instance_seed)
        self._pool = BlockPool(
            cfg.num_blocks, cfg.block_size, enable_prefix_caching=cfg.enable_prefix_caching
        )
        self._timing = TimingModel.from_config(cfg)
        self._reqs: dict[str, Request] = {}
        self._waiting: deque[Request] = deque()
        self._running: list[Request] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # -- Engine API -----------------------------------------------------------------------------

    async def start(self, on_kv_event: KvEventSink | None = None) -> None:
        self._pool.on_event = on_kv_event
        self._ensure_task()

    async def generate(self, request: EngineRequest) -> AsyncGenerator[EngineOutput, None]:
        sampler: GrammarSampler | None = None
        error: str | None = None
        s = request.sampling
        if s.structured is not None:
            replay = request.prompt_token_ids[len(request.prompt_token_ids) - s.structured_replay :]
            sampler, error = await grammar_sampler(self._model_path, s.structured, replay)
        req = self._submit(request, sampler, error)
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not req.pending and req.finish is None:
                    req.waiter = loop.create_future()
                    await req.waiter
                    req.waiter = None
                out = EngineOutput(token_ids=req.pending, finish_reason=req.finish, error=req.error)
                req.pending = []
                if req.lp_rng is not None:  # one entry per token of this output
                    out.logprobs, req.pending_lp = req.pending_lp, []
                if req.remote_decode and req.finish is not None and req.error is None:
                    # As with vLLM's NixlConnector, a decode worker takes over the KV of every prompt
                    # token but the last, which it computes itself to sample the first output token.
                    out.kv_transfer_params = {"remote_tokens": req.prompt_len - 1}
                if not req.first_sent:
                    req.first_sent = True
                    out.cached_tokens = req.cached_tokens
                    k = req.sampling.prompt_logprobs
                    if k is not None and req.error is None:  # a function of the prompt, as a model's
                        out.prompt_logprobs = self._sampler.prompt_logprobs(req, k)
                yield out
                if out.finish_reason is not None:
                    return
        finally:
            if req.finish is None:  # the consumer went away: cancelled or closed early
                self._finish(req, "abort")

    async def abort(self, request_id: str) -> None:
        req = self._reqs.get(request_id)
        if req is not None:
            self._finish(req, "abort")

    def load(self) -> LoadMetrics:
        pool = self._pool
        return LoadMetrics(
            running=len(self._running),
            waiting=len(self._waiting),
            active_blocks=pool.used,
            total_blocks=pool.total,
        )

    async def close(self) -> None:
        self._closed = True
        for req in list(self._reqs.values()):
            self._finish(req, "abort")
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])

    def kv_state(self) -> tuple[list[int], int] | None:
        return self._pool.cached_hashes(), self._pool.last_event_id

    def reset_prefix_cache(self) -> None:
        """Forget every cached block (emits a "cleared" KV event)."""
        self._pool.clear()

    # -- submission and completion --------------------------------------------------------------

    def _submit(
        self, request: EngineRequest, sampler: GrammarSampler | None = None, error: str | None = None
    ) -> Request:
        req = Request(request)
        req.sampler = sampler
        error = self._reject_reason(req) or error
        if error is not None:
            req.finish, req.error, req.state = "error", error, DONE
            return req
        self._sampler.prepare(req)
        if self._pool.enable_prefix_caching:
            req.table.hashes = sequence_block_hashes(req.tokens, self.block_size)
        self._reqs[req.id] = req
        self._waiting.append(req)
        self._ensure_task()
        self._wakeup.set()
        return req

    def _reject_reason(self, req: Request) -> str | None:
        if self._closed:
            return "the engine is closed"
        if req.prompt_len == 0:
            return "the prompt is empty"
        if req.sampling.max_tokens < 1:
            return f"max_tokens must be at least 1, got {req.sampling.max_tokens}"
        if req.id in self._reqs:
            return f"request id {req.id!r} is already in flight"
        need = self._pool.blocks_for(req.prompt_len)
        if need > self._pool.num_blocks:
            return (
                f"the prompt has {req.prompt_len} tokens and needs {need} KV blocks, but the mocker "
                f"has only {self._pool.num_blocks} blocks of {self.block_size} tokens"
            )
        return None

    def _finish(
        self, req: Request, reason: FinishReason, error: str | None = None, detach: bool = True
    ) -> None:
        """End ``req``; ``detach`` removes it from the waiting/running queues (the step filters them)."""
        if req.finish is not None:
            return
        req.finish, req.error = reason, error
        if self._reqs.get(req.id) is req:
            del self._reqs[req.id]
        if detach:
            if req.state == WAITING:
                self._waiting.remove(req)
            elif req.state == RUNNING:
                self._running.remove(req)
        req.state = DONE
        if req.table.blocks:
            self._pool.release(req.table)
        req.wake()

    # -- the scheduler --------------------------------------------------------------------------

    def _ensure_task(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="mocker-scheduler")

    async def _run(self) -> None:
        while not self._closed:
            if not self._running and not self._waiting:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            try:
                await self._step()
            except Exception:  # a bug: fail what is in flight instead of leaving it hanging
                logger.exception("mocker scheduler step failed")
                self._running, self._waiting = [], deque()
                for req in list(self._reqs.values()):
                    req.state = DONE  # already off the queues
                    self._finish(req, "error", "internal error in the mocker engine")

    async def _step(self) -> None:
        clock = self._clock
        started = clock.time()
        scheduled, prefill_tokens, decodes = self._schedule()
        if not scheduled:  # cannot happen (the oldest request always fits); never spin on it
            stuck = self._running[0] if self._running else self._waiting[0]
            logger.error("mocker could not schedule request %s", stuck.id)
            self._finish(stuck, "error", "the mocker could not schedule this request")
            return
        pool = self._pool
        ms = self._timing.step_ms(prefill_tokens, decodes, pool.used / pool.total)
        # The modelled time covers the whole step, so the scheduling work above counts towards it.
        delay = started + ms / 1000.0 - clock.time()
        await clock.sleep(delay if delay > 0.0 else 0.0)
        self._advance(scheduled)

    def _schedule(self) -> tuple[list[tuple[Request, int]], int, int]:
        """Pick this step's work and allocate its blocks. Returns (request, tokens) pairs,
        the prefill token count and the number of decoding requests."""
        pool = self._pool
        capacity = pool.num_blocks * self.block_size
        budget = self.cfg.max_num_batched_tokens
        scheduled: list[tuple[Request, int]] = []
        prefill_tokens = decodes = 0
        running = self._running
        preempted = False

        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            n = min(len(req.tokens) - req.num_computed, budget)
            target = req.num_computed + n
            if target > capacity:  # the sequence outgrew the whole cache
                self._finish(req, "length")
                continue
            while not pool.allocate(req.table, target):
                victim = running.pop()
                self._preempt(victim)
                preempted = True
                if victim is req:
                    break
            if req.state != RUNNING:
                break
            scheduled.append((req, n))
            budget -= n
            if n == 1 and req.num_computed >= req.prompt_len:
                decodes += 1
            else:
                prefill_tokens += n
            i += 1

        waiting = self._waiting
        max_seqs = self.cfg.max_num_seqs
        bs = self.block_size
        while not preempted and waiting and budget > 0 and len(running) < max_seqs:
            req = waiting[0]
            total = len(req.tokens)
            limit = (total - 1) // bs  # always compute >= 1 token
            prefix = pool.match(req.table.hashes, limit)
            computed = len(prefix) * bs
            cached = computed
            if req.remote_tokens:  # KV that came from a prefill worker counts as computed
                computed = max(computed, min(req.remote_tokens, total - 1))
            n = min(total - computed, budget)
            if computed + n > capacity:  # a recomputed sequence that no longer fits
                waiting.popleft()
                self._finish(req, "length", detach=False)
                continue
            if not pool.allocate(req.table, computed + n, prefix):
                break
            waiting.popleft()
            req.state = RUNNING
            req.num_computed = computed
            if req.num_output == 0:
                req.cached_tokens = cached
            running.append(req)
            scheduled.append((req, n))
            budget -= n
            if n == 1:  # only the last prompt token left: a forward pass as cheap as a decode step
                decodes += 1
            else:
                prefill_tokens += n
        return scheduled, prefill_tokens, decodes

    def _preempt(self, req: Request) -> None:
        """Free ``req``'s blocks and queue it first in line; it recomputes (mostly from cache) later."""
        self._pool.release(req.table)
        req.num_computed = 0
        req.remote_tokens = 0  # blocks not yet committed are gone: recompute what the cache lacks
        req.state = WAITING
        self._waiting.appendleft(req)
        logger.debug("preempted request %s", req.id)

    def _advance(self, scheduled: list[tuple[Request, int]]) -> None:
        """The step's compute is done: commit KV, sample one token per completed sequence."""
        pool = self._pool
        caching = pool.enable_prefix_caching
        any_done = False
        for req, n in scheduled:
            if req.state != RUNNING:  # aborted while the step ran
                continue
            req.num_computed += n
            if caching:
                pool.commit(req.table, req.tokens, req.num_computed)
            if req.num_computed == len(req.tokens):
                if req.sampler is None:
                    reason = self._sampler.sample(req)
                else:
                    reason = self._sampler.sample_structured(req)
                if reason is not None:
                    self._finish(req, reason, req.error, detach=False)
                    any_done = True
                else:
                    req.wake()
        if any_done:
            self._running = [r for r in self._running if r.state == RUNNING]
