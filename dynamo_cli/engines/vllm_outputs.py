"""vLLM's request outputs in this project's terms: finish reasons, logprobs (finite, as JSON needs) and
the errors by which vLLM refuses a request."""

from __future__ import annotations

from typing import Any

from dynamo_cli.transport.wire import FinishReason, TokenLogprobs

FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "abort": "abort",
    "error": "error",  # vLLM: a retryable internal error (a KV load under the "fail" policy)
    "repetition": "stop",
}

# JSON has no -inf: a logprob vLLM reports as -inf (or NaN) goes out as this.
LOGPROB_FLOOR = -9999.0


def _finite(logprob: float) -> float:
    return logprob if logprob >= LOGPROB_FLOOR else LOGPROB_FLOOR  # also NaN


def token_logprobs(token_id: int, entries: dict[int, Any] | None, k: int) -> TokenLogprobs:
    """One position of vLLM's logprobs: {token id: Logprob(logprob, rank, ...)} holding the chosen
    token and the top k (the chosen one once if among them) -> (its logprob, top ids, top logprobs)."""
    if not entries:
        return LOGPROB_FLOOR, [], []
    own = entries.get(token_id)
    ranked = sorted(entries.items(), key=lambda e: e[1].rank)
    if 0 <= k < len(ranked):  # the chosen token is not in the top k: it is the extra entry
        ranked = [e for e in ranked if e[0] != token_id][:k]
    return (
        _finite(own.logprob) if own is not None else LOGPROB_FLOOR,
        [tid for tid, _ in ranked],
        [_finite(lp.logprob) for _, lp in ranked],
    )


def prompt_logprobs(prompt: list[int], entries: list[Any], k: int) -> list[TokenLogprobs | None]:
    """vLLM's prompt logprobs (None for the first token, which has no context) in our terms."""
    return [None if e is None else token_logprobs(t, e, k) for t, e in zip(prompt, entries, strict=True)]


def refusal(e: BaseException) -> BaseException | None:
    """The error if vLLM refused the request itself (a bad parameter, a constraint its structured-output
    backends cannot compile): the request fails, the engine is fine. None for anything else."""
    from vllm.exceptions import VLLMClientError

    if type(e).__name__ == "EngineGenerateError" and e.__cause__ is not None:
        e = e.__cause__  # vLLM wraps what it did not expect, ValueErrors included
    return e if isinstance(e, (VLLMClientError, ValueError)) else None
