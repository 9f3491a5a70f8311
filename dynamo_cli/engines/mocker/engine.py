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
import math
import random
from array import array
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import xxhash

from dynamo_cli.config.models import MockerConfig
from dynamo_cli.engines.base import Engine, KvEventSink
from dynamo_cli.engines.mocker import logprobs
from dynamo_cli.engines.mocker.pool import BlockPool, BlockTable
from dynamo_cli.engines.mocker.timing import TimingModel
from dynamo_cli.kv.hashing import sequence_block_hashes
from dynamo_cli.transport.wire import (
    EngineOutput,
    EngineRequest,
    FinishReason,
    LoadMetrics,
    SamplingOptions,
    TokenLogprobs,
)

if TYPE_CHECKING:
    from dynamo_cli.engines.structured import GrammarSampler

logger = logging.getLogger(__name__)

_WAITING, _RUNNING, _DONE = 0, 1, 2
_U64 = (1 << 64) - 1
_LOGPROB_SALT = 0x6C6F6770726F6273  # logprobs draw from their own RNG: asking for them changes no token


def _tokens_digest(tokens: Sequence[int], seed: int = 0) -> int:
    return xxhash.xxh3_64_intdigest(array("q", tokens).tobytes(), seed & _U64)


class _Request:
    """Scheduler state and output buffer of one request."""

    __slots__ = (
        "banned",
        "cached_tokens",
        "error",
        "finish",
        "first_sent",
        "forced",
        "id",
        "k",
        "lp_rng",
        "num_computed",
        "num_output",
        "offset",
        "pending",
        "pending_lp",
        "prompt_len",
        "remote_decode",
        "remote_tokens",
        "rng",
        "sampler",
        "sampling",
        "state",
        "stop_ids",
        "table",
        "tokens",
        "waiter",
    )

    def __init__(self, request: EngineRequest) -> None:
        self.id = request.request_id
        self.sampling: SamplingOptions = request.sampling
        self.tokens: list[int] = list(request.prompt_token_ids)  # prompt, then outputs
        self.prompt_len = len(self.tokens)
        self.num_computed = 0  # tokens whose KV is in the pool
        self.num_output = 0
        self.table = BlockTable()
        self.state = _WAITING
        self.rng: random.Random | None = None
        self.offset = 0  # start of the top-p / top-k candidate window
        self.k = 1  # size of that window
        self.stop_ids: frozenset[int] = frozenset(request.sampling.stop_token_ids)
        # logit_bias, as far as a simulation can honour it: -100 bans a token, 100 forces one.
        bias = request.sampling.logit_bias or {}
        self.banned: frozenset[int] = frozenset(t for t, b in bias.items() if b <= -100)
        forced = [t for t, b in bias.items() if b >= 100]
        self.forced: int | None = min(forced) if forced else None
        self.cached_tokens = 0
        self.first_sent = False
        self.pending: list[int] = []  # tokens not yet handed to the consumer
        self.pending_lp: list[TokenLogprobs] = []  # their logprobs, when asked for
        self.lp_rng: random.Random | None = None  # set when logprobs are asked for
        self.sampler: GrammarSampler | None = None  # structured output
        self.finish: FinishReason | None = None
        self.error: str | None = None
        self.waiter: asyncio.Future[None] | None = None
        # Disaggregated serving: a prefill request keeps its KV for a remote decode; a decode request
        # gets its first ``remote_tokens`` prompt tokens' KV from a prefill worker (no compute time).
        params = request.kv_transfer_params or {}
        self.remote_decode = bool(params.get("do_remote_decode"))
        self.remote_tokens = int(params.get("remote_tokens", 0))

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class MockerEngine(Engine):
    """A simulated engine (see docs/mocker.md).

    ``vocab_size`` and ``eos_token_ids`` come from the model (``cfg.vocab_size`` overrides the
    former); ``instance_seed`` seeds unseeded sampling, so a worker's run is reproducible.
    ``model_path``: the model folder, whose tokenizer structured output needs (without it, structured
    requests fail with an error).
    """

    def __init__(
        self,
        cfg: MockerConfig,
        *,
        vocab_size: int,
        eos_token_ids: list[int],
        instance_seed: int = 0,
        model_path: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self._model_path = model_path
        self.block_size = cfg.block_size
        self._vocab = cfg.vocab_size if cfg.vocab_size is not None else vocab_size
        self._eos_id = eos_token_ids[0] if eos_token_ids else None
        # Output tokens come from range(vocab) minus the EOS ids; index j maps to a token by skipping them.
        self._eos_skip = sorted({e for e in eos_token_ids if 0 <= e < self._vocab})
        self._num_candidates = self._vocab - len(self._eos_skip)
        if self._num_candidates < 1:
            raise ValueError(f"vocab_size {self._vocab} leaves no token besides the EOS ids")
        self._rng = random.Random(instance_seed)  # for unseeded sampling
        self._pool = BlockPool(
            cfg.num_blocks, cfg.block_size, enable_prefix_caching=cfg.enable_prefix_caching
        )
        self._timing = TimingModel.from_config(cfg)
        self._reqs: dict[str, _Request] = {}
        self._waiting: deque[_Request] = deque()
        self._running: list[_Request] = []
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
        if request.sampling.structured is not None:
            sampler, error = await self._grammar_sampler(request.sampling.structured)
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
                        prompt = req.tokens[: req.prompt_len]
                        seed = _tokens_digest(prompt, _LOGPROB_SALT)
                        out.prompt_logprobs = logprobs.prompt_logprobs(prompt, k, self._vocab, seed)
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

    def _window_token(self, req: _Request, index: int) -> int:
        """The token at ``index`` (modulo its size) of the request's candidate window."""
        token = (req.offset + index % req.k) % self._num_candidates
        for eos in self._eos_skip:
            if token >= eos:
                token += 1
        return token

    def _candidate(self, req: _Request, index: int) -> int:
        """The token at ``index`` of the request's candidate window, or the next one logit_bias does
        not ban (all banned: the one drawn, as a -100 bias only lowers a logit)."""
        first = -1
        for j in range(min(req.k, len(req.banned) + 1)):
            token = self._window_token(req, index + j)
            if token not in req.banned:
                return token
            first = token if first < 0 else first
        return first

    # -- submission and completion --------------------------------------------------------------

    async def _grammar_sampler(self, spec: dict[str, Any]) -> tuple[GrammarSampler | None, str | None]:
        """The grammar state of a structured request, built off the event loop (the first request of
        a model also loads its tokenizer); or why there is none."""
        folder = self._model_path
        if folder is None:
            return None, "structured output needs the model's tokenizer; this mocker has no model folder"
        from dynamo_cli.engines.structured import GrammarSampler, StructuredError, grammar_tokenizer
        from dynamo_cli.errors import DynamoError

        try:
            return await asyncio.to_thread(lambda: GrammarSampler(grammar_tokenizer(folder), spec)), None
        except (StructuredError, DynamoError) as e:
            return None, f"structured output: {e}"

    def _submit(
        self, request: EngineRequest, sampler: GrammarSampler | None = None, error: str | None = None
    ) -> _Request:
        req = _Request(request)
        req.sampler = sampler
        error = self._reject_reason(req) or error
        if error is not None:
            req.finish, req.error, req.state = "error", error, _DONE
            return req
        s = req.sampling
        if s.temperature <= 0:
            seed = _tokens_digest(req.tokens)
        elif s.seed is not None:
            seed = _tokens_digest(req.tokens, s.seed)
        else:
            seed = self._rng.getrandbits(64)
        rng = req.rng = random.Random(seed)
        if s.logprobs is not None:
            req.lp_rng = random.Random(seed ^ _LOGPROB_SALT)
        n = self._num_candidates
        k = n if s.top_p >= 1.0 else max(1, math.ceil(s.top_p * n))
        if s.top_k > 0:
            k = min(k, s.top_k)
        req.k = k
        req.offset = rng.randrange(n) if k < n else 0
        if self._pool.enable_prefix_caching:
            req.table.hashes = sequence_block_hashes(req.tokens, self.block_size)
        self._reqs[req.id] = req
        self._waiting.append(req)
        self._ensure_task()
        self._wakeup.set()
        return req

    def _reject_reason(self, req: _Request) -> str | None:
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
        self, req: _Request, reason: FinishReason, error: str | None = None, detach: bool = True
    ) -> None:
        """End ``req``; ``detach`` removes it from the waiting/running queues (the step filters them)."""
        if req.finish is not None:
            return
        req.finish, req.error = reason, error
        if self._reqs.get(req.id) is req:
            del self._reqs[req.id]
        if detach:
            if req.state == _WAITING:
                self._waiting.remove(req)
            elif req.state == _RUNNING:
                self._running.remove(req)
        req.state = _DONE
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
                    req.state = _DONE  # already off the queues
                    self._finish(req, "error", "internal error in the mocker engine")

    async def _step(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        scheduled, prefill_tokens, decodes = self._schedule()
        if not scheduled:  # cannot happen (the oldest request always fits); never spin on it
            stuck = self._running[0] if self._running else self._waiting[0]
            logger.error("mocker could not schedule request %s", stuck.id)
            self._finish(stuck, "error", "the mocker could not schedule this request")
            return
        pool = self._pool
        ms = self._timing.step_ms(prefill_tokens, decodes, pool.used / pool.total)
        # The modelled time covers the whole step, so the scheduling work above counts towards it.
        delay = started + ms / 1000.0 - loop.time()
        await asyncio.sleep(delay if delay > 0.0 else 0.0)
        self._advance(scheduled)

    def _schedule(self) -> tuple[list[tuple[_Request, int]], int, int]:
        """Pick this step's work and allocate its blocks. Returns (request, tokens) pairs,
        the prefill token count and the number of decoding requests."""
        pool = self._pool
        capacity = pool.num_blocks * self.block_size
        budget = self.cfg.max_num_batched_tokens
        scheduled: list[tuple[_Request, int]] = []
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
            if req.state != _RUNNING:
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
            req.state = _RUNNING
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

    def _preempt(self, req: _Request) -> None:
        """Free ``req``'s blocks and queue it first in line; it recomputes (mostly from cache) later."""
        self._pool.release(req.table)
        req.num_computed = 0
        req.remote_tokens = 0  # blocks not yet committed are gone: recompute what the cache lacks
        req.state = _WAITING
        self._waiting.appendleft(req)
        logger.debug("preempted request %s", req.id)

    def _advance(self, scheduled: list[tuple[_Request, int]]) -> None:
        """The step's compute is done: commit KV, sample one token per completed sequence."""
        pool = self._pool
        caching = pool.enable_prefix_caching
        any_done = False
        for req, n in scheduled:
            if req.state != _RUNNING:  # aborted while the step ran
                continue
            req.num_computed += n
            if caching:
                pool.commit(req.table, req.tokens, req.num_computed)
            if req.num_computed == len(req.tokens):
                reason = self._sample(req) if req.sampler is None else self._sample_structured(req)
                if reason is not None:
                    self._finish(req, reason, req.error, detach=False)
                    any_done = True
                else:
                    req.wake()
        if any_done:
            self._running = [r for r in self._running if r.state == _RUNNING]

    def _sample(self, req: _Request) -> FinishReason | None:
        """Append one output token; return a finish reason if it ends the request."""
        s = req.sampling
        rng = req.rng
        assert rng is not None
        can_stop = not s.ignore_eos and req.num_output >= s.min_tokens
        eos_roll = rng.random() if self.cfg.eos_rate > 0.0 else 1.0
        reason: FinishReason | None = None
        eos = self._eos_id
        if (
            can_stop
            and eos is not None
            and eos not in req.banned
            and req.forced is None
            and eos_roll < self.cfg.eos_rate
        ):
            token, reason = eos, "stop"
        else:
            token = req.forced if req.forced is not None else self._candidate(req, int(rng.random() * req.k))
            if can_stop and token in req.stop_ids:
                reason = "stop"
        self._append(req, token)
        if reason is None and req.num_output >= s.max_tokens:
            reason = "length"
        return reason

    def _sample_structured(self, req: _Request) -> FinishReason | None:
        """``_sample`` under a grammar: the token is one it allows; its end (EOS) stops the request,
        even before min_tokens or with ignore_eos, since no other token is valid then."""
        from dynamo_cli.engines.structured import StructuredError

        s = req.sampling
        sampler = req.sampler
        assert sampler is not None and req.rng is not None
        can_stop = not s.ignore_eos and req.num_output >= s.min_tokens
        try:
            token = sampler.next_token(
                req.rng,
                progress=req.num_output / s.max_tokens,
                can_stop=can_stop,
                banned=req.banned,
                forced=req.forced,
            )
        except StructuredError as e:
            req.error = f"structured output: {e}"
            return "error"
        reason: FinishReason | None = "stop" if sampler.finished else None
        if token is None:  # the grammar ended and the model has no EOS token to say so
            return reason
        if can_stop and token in req.stop_ids:
            reason = "stop"
        self._append(req, token)
        if reason is None and req.num_output >= s.max_tokens:
            reason = "length"
        return reason

    def _append(self, req: _Request, token: int) -> None:
        req.tokens.append(token)
        req.pending.append(token)
        req.num_output += 1
        if req.lp_rng is not None:
            req.pending_lp.append(self._token_logprobs(req, token))

    def _token_logprobs(self, req: _Request, token: int) -> TokenLogprobs:
        """Logprobs of a sampled token; the alternatives come from the tokens it was drawn among."""
        rng, k = req.lp_rng, req.sampling.logprobs
        assert rng is not None and k is not None
        if req.sampler is not None:
            allowed = req.sampler.allowed
            count, at = len(allowed), lambda i: int(allowed[i])
        else:
            count, at = req.k, lambda i: self._window_token(req, i)
        others, covers_all = logprobs.pick_alternatives(rng, token, k, count, at, req.banned)
        return logprobs.sampled_logprobs(rng, token, k, others, covers_all)
