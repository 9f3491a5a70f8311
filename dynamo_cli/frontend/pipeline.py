"""One request's journey after validation: prompt ids in, text deltas out (stop strings, usage, timing)."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from dynamo_cli.frontend.client import WorkerClient
from dynamo_cli.frontend.metrics import FrontendMetrics
from dynamo_cli.frontend.schemas import OpenAIError, Sampling
from dynamo_cli.models.tokenizer import ModelTokenizer
from dynamo_cli.transport.wire import (
    REQUEST_ERROR,
    EngineOutput,
    EngineRequest,
    SamplingOptions,
    TokenLogprobs,
)


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{os.urandom(12).hex()}"


@dataclass
class Generation:
    """State of one generation; ``deltas()`` drives it."""

    request_id: str
    prompt_ids: list[int]
    sampling: SamplingOptions
    stops: list[str]
    skip_special_tokens: bool
    include_stop_str: bool = False
    index: int = 0  # the choice's index (n > 1)
    finish_reason: str | None = None
    completion_tokens: int = 0
    cached_tokens: int = 0
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    # With logprobs, those of the tokens whose text has been yielded since the last take_logprobs() (a
    # consumer takes them with each text delta): chat entries as JSON written by the worker
    # (sampling.logprobs_json), else (token id, its logprobs).
    logprob_entries: list[Any] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprobs | None] | None = None

    def take_logprobs(self) -> list[Any]:
        taken, self.logprob_entries = self.logprob_entries, []
        return taken

    def choice(self, index: int, request_id: str) -> Generation:
        """Choice ``index`` of n: its own request (id, and seed + index when seeded)."""
        seed = self.sampling.seed
        sampling = replace(self.sampling, seed=None if seed is None else seed + index)
        return replace(self, request_id=request_id, sampling=sampling, index=index, logprob_entries=[])

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    def usage(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


def build_generation(
    request_id: str,
    prompt_ids: list[int],
    body: Sampling,
    tok: ModelTokenizer,
    *,
    structured: dict[str, Any] | None = None,
) -> Generation:
    n = len(prompt_ids)
    limit = tok.context_length
    if n >= limit:
        raise OpenAIError(
            400,
            f"the prompt has {n} tokens; the model's context is {limit}",
            param="messages" if hasattr(body, "messages") else "prompt",
            code="context_length_exceeded",
        )
    requested = body.requested_max_tokens
    if requested is not None and n + requested > limit:
        raise OpenAIError(
            400,
            f"max_tokens ({requested}) plus the prompt ({n} tokens) exceeds the model's context ({limit})",
            param="max_tokens",
            code="context_length_exceeded",
        )
    bias = {int(k): float(v) for k, v in body.logit_bias.items()} if body.logit_bias else None
    if bias and max(bias) >= tok.vocab_size:
        raise OpenAIError(
            400,
            f"logit_bias names token {max(bias)}; the model's vocabulary has {tok.vocab_size} tokens",
            param="logit_bias",
        )
    sampling = SamplingOptions(
        max_tokens=requested or (limit - n),
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=body.seed,
        ignore_eos=body.ignore_eos,
        min_tokens=body.min_tokens,
        stop_token_ids=list(body.stop_token_ids or []),
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        repetition_penalty=body.repetition_penalty,
        min_p=body.min_p,
        logit_bias=bias,
        structured=structured,
    )
    logprobs = getattr(body, "logprobs", None)
    if isinstance(logprobs, bool):  # chat: logprobs true, top_logprobs k, written by the worker
        sampling.logprobs = (getattr(body, "top_logprobs", None) or 0) if logprobs else None
        sampling.logprobs_json = logprobs
    else:  # completions: logprobs k; echo shows the prompt's too
        sampling.logprobs = logprobs
        prompt_lp = getattr(body, "prompt_logprobs", None)
        if prompt_lp is None and logprobs is not None and getattr(body, "echo", False):
            prompt_lp = logprobs
        sampling.prompt_logprobs = prompt_lp
    return Generation(
        request_id,
        prompt_ids,
        sampling,
        body.stop_list,
        body.skip_special_tokens,
        include_stop_str=body.include_stop_str_in_output,
    )


async def run_generation(
    gen: Generation, model: str, client: WorkerClient, tok: ModelTokenizer, metrics: FrontendMetrics
) -> AsyncIterator[str]:
    """Yield text deltas; on return, gen.finish_reason / completion_tokens / cached_tokens are final."""
    detok = tok.detokenizer(gen.skip_special_tokens)
    stops = gen.stops
    hold = max((len(s) for s in stops), default=1) - 1
    held = ""
    itl = metrics.itl
    last = gen.started
    outputs: AsyncGenerator[EngineOutput, None] = client.generate(
        model, EngineRequest(gen.request_id, gen.prompt_ids, gen.sampling)
    )
    want_logprobs = gen.sampling.logprobs is not None
    try:
        async for out in outputs:
            now = time.perf_counter()
            n_new = len(out.token_ids)
            if out.cached_tokens is not None:
                gen.cached_tokens = out.cached_tokens
            if want_logprobs:
                if out.logprobs_json:
                    gen.logprob_entries.extend(out.logprobs_json)
                elif out.logprobs:
                    gen.logprob_entries.extend(zip(out.token_ids, out.logprobs, strict=True))
            if out.prompt_logprobs is not None:
                gen.prompt_logprobs = out.prompt_logprobs
            if out.disagg is not None:
                metrics.count_disagg(out.disagg)
            if n_new:
                if gen.first_token_at is None:
                    gen.first_token_at = now
                    metrics.ttft.observe(now - gen.started)
                else:
                    gap = (now - last) / n_new
                    for _ in range(n_new):
                        itl.observe(gap)
                last = now
                gen.completion_tokens += n_new
            if out.error:
                if out.error.startswith(REQUEST_ERROR):
                    raise OpenAIError(400, out.error[len(REQUEST_ERROR) :], code="invalid_value")
                raise OpenAIError(500, f"the worker failed the request: {out.error}", code="worker_error")
            text = detok.step(out.token_ids) if n_new else ""
            if out.finish_reason is not None:
                text += detok.flush()
            if stops:
                buf = held + text
                cut, end = min(((i, i + len(s)) for s in stops if (i := buf.find(s)) >= 0), default=(-1, -1))
                if cut >= 0:
                    if gen.include_stop_str:
                        cut = end
                    if cut:
                        yield buf[:cut]
                    gen.finish_reason = "stop"
                    return
                if out.finish_reason is None and hold:
                    held = buf[-hold:]
                    text = buf[:-hold]
                else:
                    held, text = "", buf
            if text:
                yield text
            if out.finish_reason is not None:
                if out.finish_reason == "abort":
                    raise OpenAIError(
                        503, "the worker stopped the request (is it shutting down?)", code="aborted"
                    )
                if out.finish_reason == "error":
                    raise OpenAIError(500, "the worker failed the request", code="worker_error")
                gen.finish_reason = out.finish_reason
                return
        raise OpenAIError(
            502, "the worker ended the stream without finishing the request", code="worker_failed"
        )
    finally:
        await outputs.aclose()
        metrics.count_tokens(gen.prompt_tokens, gen.cached_tokens, gen.completion_tokens)
