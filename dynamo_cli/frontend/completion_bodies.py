"""The whole (non-streamed) chat and text completion bodies, their usage and vLLM's `prompt_logprobs`: the
part of the API's handlers (`server.Api`) that turns finished choices into a response body."""

from __future__ import annotations

import time
from typing import Any

from dynamo_cli.frontend.choice_runs import ChoiceRun
from dynamo_cli.frontend.outputs import LogprobFormatter
from dynamo_cli.frontend.pipeline import Generation
from dynamo_cli.frontend.prepare import Prepared
from dynamo_cli.frontend.state import FrontendState
from dynamo_cli.models.logprob_json import chat_logprobs
from dynamo_cli.transport.wire import TokenLogprobs


class CompletionBodies:
    """Methods of `server.Api`: ``s`` and ``logprobs`` are set there."""

    s: FrontendState
    logprobs: LogprobFormatter

    @staticmethod
    def _usage(runs: list[ChoiceRun]) -> dict[str, Any]:
        usage = runs[0].gen.usage()
        if len(runs) > 1:
            out = sum(r.gen.completion_tokens for r in runs)
            usage["completion_tokens"] = out
            usage["total_tokens"] = usage["prompt_tokens"] + out
        return usage

    def _prompt_entries(self, gen: Generation) -> list[tuple[int, TokenLogprobs | None]]:
        return list(zip(gen.prompt_ids, gen.prompt_logprobs or [None] * len(gen.prompt_ids), strict=False))

    def _full(self, runs: list[ChoiceRun], kind: str, prep: Prepared) -> dict[str, Any]:
        choices = []
        for run in runs:
            gen, shaper = run.gen, run.shaper
            want_lp = gen.sampling.logprobs is not None
            if kind == "chatcmpl":
                choice: dict[str, Any] = {
                    "index": gen.index,
                    "message": shaper.message(),
                    "logprobs": chat_logprobs(gen.logprob_entries) if want_lp else None,
                    "finish_reason": shaper.finish_reason(gen.finish_reason),
                }
            else:
                text = "".join(shaper.content)
                entries: list[tuple[int, TokenLogprobs | None]] = list(gen.logprob_entries)
                if prep.prompt_text is not None:
                    text = prep.prompt_text + text
                    if gen.prompt_logprobs is not None:
                        entries = self._prompt_entries(gen) + entries
                lp = self.logprobs.completion(entries, 0)[0] if want_lp else None
                choice = {
                    "index": gen.index,
                    "text": text,
                    "logprobs": lp,
                    "finish_reason": gen.finish_reason,
                }
                if gen.prompt_logprobs is not None and prep.prompt_text is None:
                    choice["prompt_logprobs"] = self._vllm_prompt_logprobs(gen)
            choices.append(choice)
        return {
            "id": runs[0].gen.request_id.rsplit("-", 1)[0] if len(runs) > 1 else runs[0].gen.request_id,
            "object": "chat.completion" if kind == "chatcmpl" else "text_completion",
            "created": int(time.time()),
            "model": self.s.model,
            "choices": choices,
            "usage": self._usage(runs),
        }

    def _vllm_prompt_logprobs(self, gen: Generation) -> list[dict[str, Any] | None]:
        """vLLM's `prompt_logprobs`: per prompt token, None or {token id: {logprob, rank, decoded_token}}."""
        out: list[dict[str, Any] | None] = []
        for token_id, lps in self._prompt_entries(gen):
            if lps is None:
                out.append(None)
                continue
            lp, ids, top = lps
            entry = {str(token_id): {"logprob": lp, "decoded_token": self.s.tokenizer.decode([token_id])}}
            for rank, (tid, tlp) in enumerate(zip(ids, top, strict=False), 1):
                entry.setdefault(str(tid), {"logprob": tlp, "decoded_token": self.s.tokenizer.decode([tid])})
                entry[str(tid)]["rank"] = rank
            out.append(entry)
        return out
