"""Every request field the frontend recognises, in one place, and what becomes of each.

Recognised means OpenAI's chat-completions, completions and responses request fields, plus vLLM's
extra sampling and structured-output fields. Each is one of:

- honoured: done (validated by ``schemas`` and carried to the engine or the output's shape);
- no effect: accepted because doing nothing is its meaning here (an end-user id, a cache hint that the
  KV router makes unnecessary, metadata that would only be kept with ``store``);
- refused: a 400 naming it when it asks for something this server cannot do (any value but its
  neutral ones).

Anything else is unknown: ignored as vLLM does, logged once per name and counted in a metric.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Literal

from dynamo_cli.frontend.schemas import OpenAIError

logger = logging.getLogger(__name__)

Endpoint = Literal["chat", "completions", "responses"]

_SAMPLING = {
    "model", "stream", "stream_options", "temperature", "top_p", "seed", "stop", "n",
    "presence_penalty", "frequency_penalty", "logit_bias", "max_tokens",
    # vLLM's extra sampling fields
    "top_k", "min_p", "repetition_penalty", "min_tokens", "stop_token_ids", "ignore_eos",
    "skip_special_tokens", "include_stop_str_in_output",
    # vLLM's structured-output fields (and OpenAI's response_format)
    "response_format", "structured_outputs", "guided_json", "guided_regex", "guided_choice",
    "guided_grammar",
}  # fmt: skip

# fmt: off
HONOURED: dict[Endpoint, frozenset[str]] = {
    "chat": frozenset(
        _SAMPLING
        | {
            "messages", "max_completion_tokens", "logprobs", "top_logprobs", "tools", "tool_choice",
            "parallel_tool_calls", "add_generation_prompt", "chat_template_kwargs", "add_special_tokens",
        }
    ),
    "completions": frozenset(_SAMPLING | {"prompt", "echo", "logprobs", "prompt_logprobs", "best_of"}),
    "responses": frozenset(
        {
            "model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "tools",
            "tool_choice", "parallel_tool_calls", "text", "stream", "store", "previous_response_id",
            "top_k", "min_p", "repetition_penalty", "seed", "presence_penalty", "frequency_penalty",
            "stream_options", "chat_template_kwargs", "ignore_eos", "include_stop_str_in_output",
            "logit_bias", "skip_special_tokens", "stop", "stop_token_ids", "structured_outputs",
        }
    ),
}

# fmt: on

NO_EFFECT: dict[Endpoint, frozenset[str]] = {
    "chat": frozenset({"user", "safety_identifier", "prompt_cache_key", "metadata", "service_tier"}),
    "completions": frozenset({"user"}),
    "responses": frozenset({"user", "safety_identifier", "prompt_cache_key", "metadata", "service_tier"}),
}

# name -> (values that ask for nothing, why anything else is refused)
_Refusal = tuple[tuple[Any, ...], str]
_COMMON_REFUSED: dict[str, _Refusal] = {
    "prompt_cache_retention": ((None, "in-memory"), "prompts are cached in the engines' KV memory only"),
    "prompt_cache_options": ((None, {}), "prompt cache options are not supported"),
    "moderation": ((None, False), "moderation is not available on this server"),
    "reasoning_effort": ((None,), "the reasoning effort cannot be set for this model"),
    "verbosity": ((None, "medium"), "verbosity cannot be set for this model"),
    "use_beam_search": ((None, False), "beam search is not supported"),
    "length_penalty": ((None, 1, 1.0), "length_penalty applies only to beam search, which is not supported"),
    "truncate_prompt_tokens": ((None,), "prompt truncation is not supported; send a shorter prompt"),
    "allowed_token_ids": ((None, []), "allowed_token_ids is not supported; use logit_bias"),
    "bad_words": ((None, []), "bad_words is not supported; use logit_bias"),
    "spaces_between_special_tokens": ((None, True), "special tokens are always separated by spaces"),
    "guided_decoding_backend": ((None,), "the structured-output backend is the engine's own"),
    "guided_whitespace_pattern": ((None,), "guided_whitespace_pattern is not supported"),
    "priority": ((None, 0), "request priorities are not supported"),
    "request_id": ((None,), "request ids are assigned by the server"),
    "logits_processors": ((None, []), "custom logits processors are not supported"),
    "return_tokens_as_token_ids": ((None, False), "tokens are returned as text"),
    "return_token_ids": ((None, False), "token ids are not returned"),
    "cache_salt": ((None,), "cache_salt is not supported"),
    "kv_transfer_params": ((None,), "KV transfer is managed by the deployment"),
    "vllm_xargs": ((None, {}), "vllm_xargs is not supported"),
    "mm_processor_kwargs": ((None, {}), "this model takes text only"),
    "prompt_logprobs": ((None,), "prompt_logprobs is supported on /v1/completions only"),
    "include_reasoning": ((None, True), "reasoning is always included when a reasoning parser is on"),
    "ec_transfer_params": ((None,), "encoder cache transfer is not supported"),
    "logprob_token_ids": ((None, []), "logprobs of chosen token ids are not supported"),
    "media_io_kwargs": ((None, {}), "this model takes text only"),
    "mm_payload": ((None,), "this model takes text only"),
    "prompt_embeds": ((None,), "prompt embeddings are not accepted; send text or token ids"),
    "repetition_detection": ((None,), "repetition detection is not supported"),
    "return_mm_kwargs": ((None, False), "this model takes text only"),
    "return_prompt_text": ((None, False), "the prompt text is not returned"),
    "return_token_offsets": ((None, False), "token offsets are not returned"),
    "routed_experts_prompt_start": ((None,), "expert routing cannot be set"),
    "session_id": ((None,), "sessions are not kept on this server"),
    "stream_interval": ((None, 1), "every token is streamed as it comes"),
    "thinking_token_budget": ((None,), "a thinking budget cannot be set"),
    "truncation_side": ((None,), "prompts are never truncated; a too long one is refused"),
    "watermarking": ((None, False), "watermarking is not supported"),
    "enable_response_messages": ((None, False), "response messages are not returned"),
    "previous_input_messages": ((None, []), "this server keeps no conversations; send the whole input"),
}
REFUSED: dict[Endpoint, dict[str, _Refusal]] = {
    "chat": {
        **_COMMON_REFUSED,
        "audio": ((None,), "audio output is not supported: this model produces text only"),
        "modalities": ((None, ["text"]), "only the text modality is supported"),
        "prediction": ((None,), "predicted outputs are not supported"),
        "web_search_options": ((None,), "web search is not available on this server"),
        "functions": ((None,), "functions is deprecated and not supported; use tools"),
        "function_call": ((None,), "function_call is deprecated and not supported; use tool_choice"),
        "store": ((None, False), "this server keeps nothing; completions cannot be stored"),
        "echo": ((None, False), "echo is supported on /v1/completions only"),
        "continue_final_message": ((None, False), "continue_final_message is not supported"),
        "documents": ((None,), "documents are not supported by this chat template"),
        "chat_template": ((None,), "custom chat templates are not accepted; the model's own is used"),
        "best_of": ((None, 1), "best_of is not supported on chat completions"),
    },
    "completions": {
        **{k: v for k, v in _COMMON_REFUSED.items() if k != "prompt_logprobs"},
        "suffix": ((None, ""), "suffix (insertion) is not supported by this model"),
        "add_special_tokens": ((None, True), "completions always add the model's special tokens"),
    },
    "responses": {
        **{k: v for k, v in _COMMON_REFUSED.items() if k != "reasoning_effort"},
        "background": ((None, False), "background responses are not supported (nothing is kept)"),
        "background_options": ((None,), "background responses are not supported"),
        "conversation": ((None,), "conversations are not kept on this server"),
        "context_management": ((None,), "context management is not supported"),
        "prompt": ((None,), "prompt templates are not supported"),
        "reasoning": ((None, {}), "reasoning options cannot be set for this model"),
        "max_tool_calls": ((None,), "max_tool_calls is not supported"),
        "top_logprobs": ((None, 0), "logprobs are not available on /v1/responses; use chat completions"),
        "image": ((None,), "this model takes text only"),
        "access_programs": ((None,), "access programs are not supported"),
        "include": ((None, []), "no extra output (logprobs, encrypted reasoning...) can be included"),
        "truncation": ((None, "disabled"), "prompts are never truncated; a too long one is refused"),
    },
}


def recognised(endpoint: Endpoint) -> frozenset[str]:
    return HONOURED[endpoint] | NO_EFFECT[endpoint] | frozenset(REFUSED[endpoint])


def check_refused(data: dict[str, Any], endpoint: Endpoint) -> None:
    """A 400 for the first recognised field that asks for what this server cannot do."""
    refused = REFUSED[endpoint]
    for name in data.keys() & refused.keys():
        neutral, why = refused[name]
        value = data[name]
        if not any((value == n and type(value) is type(n)) or value is n for n in neutral):
            raise OpenAIError(400, f"{name}: {why}", param=name, code="unsupported_parameter")


class UnknownFields:
    """Unknown field names: each logged the first time it is seen and counted (``count``). Names are
    remembered up to a bound, so a client sending endless new names cannot grow memory or labels."""

    MAX_NAMES = 256

    def __init__(self, on_count: Any = None) -> None:
        self._seen: set[str] = set()
        self._on_count = on_count  # callable(label) -> None (a metric)

    def note(self, data: dict[str, Any], endpoint: Endpoint) -> list[str]:
        known = recognised(endpoint)
        unknown = [k for k in data if k not in known]
        for name in unknown:
            label = name[:64]
            if label not in self._seen:
                if len(self._seen) >= self.MAX_NAMES:
                    label = "(other)"
                else:
                    self._seen.add(label)
                    logger.warning(
                        "%s request field %r is not recognised; ignored (as vLLM does)", endpoint, label
                    )
            if self._on_count is not None:
                self._on_count(label)
        return unknown


def all_fields(endpoints: Iterable[Endpoint] = ("chat", "completions", "responses")) -> dict[str, set[str]]:
    """Field name -> the endpoints that recognise it (for docs and tests)."""
    out: dict[str, set[str]] = {}
    for ep in endpoints:
        for name in recognised(ep):
            out.setdefault(name, set()).add(ep)
    return out
