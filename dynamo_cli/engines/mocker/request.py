"""One request inside the mocker: its scheduler state, sampling state and output buffer."""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING

import xxhash

from dynamo_cli.engines.mocker.pool import BlockTable
from dynamo_cli.transport.wire import EngineRequest, FinishReason, SamplingOptions, TokenLogprobs

if TYPE_CHECKING:
    from dynamo_cli.engines.structured import GrammarSampler

WAITING, RUNNING, DONE = 0, 1, 2


class Request:
    """Scheduler state and output buffer of one request."""

    __slots__ = (
        "banned",
        "cached_tokens",
        "error",
        "finish",
        "first_sent",
        "forced",
        "history",
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
        self.state = WAITING
        self.rng: random.Random | None = None
        self.history: xxhash.xxh3_64 | None = None  # hash of every token so far: seeds the next draw
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
