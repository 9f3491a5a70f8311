"""vLLM's SamplingParams from a request's SamplingOptions, and the warm-up request sent before any work.
vLLM is imported inside the functions, only when they run."""

from __future__ import annotations

from typing import Any

from dynamo_cli.transport.wire import SamplingOptions

# SamplingOptions.structured's keys (vLLM's StructuredOutputsParams silently ignores unknown ones).
STRUCTURED_KINDS = frozenset({"json", "json_object", "regex", "choice", "grammar"})


def sampling_params(s: SamplingOptions, kv: dict[str, Any] | None) -> Any:
    """vLLM's SamplingParams for ``s`` (token-id deltas, no detokenisation); ``kv``: the request's
    kv_transfer_params, if any. ValueError for a structured-output spec vLLM would not read."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    structured = None
    if s.structured_replay:
        raise ValueError("vLLM cannot resume a grammar over tokens generated elsewhere (structured_replay)")
    if s.structured is not None:
        if len(s.structured) != 1 or not set(s.structured) <= STRUCTURED_KINDS:
            raise ValueError(
                f"structured output takes exactly one of {', '.join(sorted(STRUCTURED_KINDS))}, "
                f"not {', '.join(s.structured) or 'none'}"
            )
        structured = StructuredOutputsParams(**s.structured)
    return SamplingParams(
        n=1,
        max_tokens=s.max_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k if s.top_k > 0 else 0,
        seed=s.seed,
        ignore_eos=s.ignore_eos,
        min_tokens=s.min_tokens,
        stop_token_ids=s.stop_token_ids or None,
        presence_penalty=s.presence_penalty,
        frequency_penalty=s.frequency_penalty,
        repetition_penalty=s.repetition_penalty,
        min_p=s.min_p,
        logit_bias=s.logit_bias or None,
        logprobs=s.logprobs,
        prompt_logprobs=s.prompt_logprobs,
        structured_outputs=structured,
        output_kind=RequestOutputKind.DELTA,
        detokenize=False,
        extra_args={"kv_transfer_params": kv} if kv is not None else None,
    )


async def warm_up(engine: Any) -> None:
    """One token with logprobs before any work: vLLM compiles its logprob ranking on the first such
    request (2-15 s on CPU), which would otherwise stall that request and everything batched with it."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=1, logprobs=1, detokenize=False)
    async for _ in engine.generate(TokensPrompt(prompt_token_ids=[0]), params, "dynamo-warm-up"):
        pass
