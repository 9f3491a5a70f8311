"""What crosses process boundaries: requests, streamed outputs, KV events and load.

Workers receive token ids, never text. The frontend sends an EngineRequest; an engine streams
EngineOutputs (new token ids per step) and reports KvEvents and LoadMetrics, which the worker publishes
for routers and the planner. ``protocol`` packs these for the wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length", "abort", "error"]


@dataclass(slots=True)
class SamplingOptions:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    # Extra token ids that end the request (besides the engine's own EOS); honoured even with
    # ignore_eos, as in vLLM.
    stop_token_ids: list[int] = field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_p: float = 0.0
    # Token id -> bias added to its logit (-100: never sampled; 100: always, as OpenAI describes).
    logit_bias: dict[int, float] | None = None
    # Log-probabilities, as vLLM's `logprobs`: None for none; k >= 0 for the sampled token's logprob
    # and the k most likely tokens' (EngineOutput.logprobs). prompt_logprobs: the same for every prompt
    # token (completions' echo), on the first output.
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    # The worker writes each token's logprobs as an OpenAI chat entry (EngineOutput.logprobs_json,
    # models.logprob_json) instead of sending the values: the frontend, shared by every stream, then
    # only joins bytes.
    logprobs_json: bool = False
    # Structured output, as vLLM's StructuredOutputsParams, exactly one key: {"json": schema (a dict)},
    # {"json_object": True}, {"regex": str}, {"choice": [str, ...]} or {"grammar": str (EBNF or Lark)}.
    # The output is valid by construction when it ends on its own (finish "stop"); the engine ends it
    # when the grammar is complete.
    structured: dict[str, Any] | None = None
    # With structured: the prompt's last N tokens were generated under the grammar (a request migrated
    # from another worker). The grammar consumes them before the first new token.
    structured_replay: int = 0


# One token's log-probabilities: (the token's own logprob, the top ids, their logprobs), the top ones
# most likely first (as many as SamplingOptions.logprobs asked for).
TokenLogprobs = tuple[float, list[int], list[float]]


@dataclass(slots=True)
class EngineRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingOptions
    # Disaggregated serving, as vLLM's KV connectors spell it. On a prefill worker,
    # {"do_remote_decode": True}: compute the prompt's KV and keep it for a remote decode engine; the
    # final output then carries what that engine needs (EngineOutput.kv_transfer_params). On a decode
    # worker: those params; the engine takes the prompt's KV from the prefill side instead of computing
    # it (vLLM pulls it through its NixlConnector; the mocker counts it as already computed).
    kv_transfer_params: dict[str, Any] | None = None


# An EngineOutput.error that starts with this is the request's fault (a grammar the vocabulary cannot
# satisfy, say): the frontend answers 400, not 500, and no other worker is tried.
REQUEST_ERROR = "invalid request: "


@dataclass(slots=True)
class EngineOutput:
    """One step of a request's stream: the new tokens since the previous output."""

    token_ids: list[int]
    finish_reason: FinishReason | None = None
    # Set on the first output of a request: how many prompt tokens were served from the prefix cache.
    cached_tokens: int | None = None
    error: str | None = None
    # Prefill side of disaggregated serving: set on the final output (see EngineRequest).
    kv_transfer_params: dict[str, Any] | None = None
    # Set by a decode worker on a request's first output: where its prefill ran and why (metrics).
    disagg: dict[str, Any] | None = None
    # With SamplingOptions.logprobs: one entry per token of token_ids.
    logprobs: list[TokenLogprobs] | None = None
    # With SamplingOptions.prompt_logprobs, on the first output: one per prompt token (None for the
    # first, which has no context).
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    # With SamplingOptions.logprobs_json, set by the worker in place of ``logprobs``: one JSON entry a token.
    logprobs_json: list[bytes] | None = None


@dataclass(slots=True)
class KvEvent:
    """A change to an engine's KV cache, in the router's terms.

    kind "stored": ``block_hashes`` (sequence hashes, in prefix order) were added; ``parent_hash`` is
    the sequence hash of the block before the first one (None at the start of a sequence); token_ids
    are the tokens of those blocks. "removed": ``block_hashes`` were evicted. "cleared": everything went.
    ``event_id`` is monotonic per engine instance, starting at 1.
    """

    event_id: int
    kind: Literal["stored", "removed", "cleared"]
    block_hashes: list[int] = field(default_factory=list)
    parent_hash: int | None = None
    token_ids: list[int] = field(default_factory=list)


@dataclass(slots=True)
class LoadMetrics:
    running: int
    waiting: int
    active_blocks: int  # blocks held by running requests
    total_blocks: int

    @property
    def kv_usage(self) -> float:
        return self.active_blocks / self.total_blocks if self.total_blocks else 0.0
