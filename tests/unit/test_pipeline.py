"""The frontend pipeline: build_generation's context checks, and run_generation's text deltas, stop strings,
finish reasons, usage and metrics, driven by a scripted fake worker client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest

from dynamo_cli.frontend.metrics import FrontendMetrics
from dynamo_cli.frontend.pipeline import Generation, build_generation, run_generation
from dynamo_cli.frontend.schemas import ChatCompletionRequest, CompletionRequest, OpenAIError
from dynamo_cli.models.tokenizer import ModelTokenizer
from dynamo_cli.transport.wire import EngineOutput, EngineRequest

MODEL = "tiny"


class FakeClient:
    """Streams the scripted outputs; records the request and whether the stream was closed."""

    def __init__(self, outputs: Sequence[EngineOutput]):
        self.outputs = list(outputs)
        self.requests: list[tuple[str, EngineRequest]] = []
        self.sent = 0
        self.closed = False

    async def generate(self, model: str, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        self.requests.append((model, request))
        try:
            for out in self.outputs:
                self.sent += 1
                yield out
        finally:
            self.closed = True


def script(
    tok: ModelTokenizer, pieces: Sequence[str], finish: str | None = "length", cached: int | None = 0
) -> list[EngineOutput]:
    """One output per piece (its tokens), the last one finishing; cached_tokens on the first only."""
    outs = [EngineOutput(tok.encode(p, add_special_tokens=False)) for p in pieces]
    for out in outs:
        assert out.token_ids, "every scripted piece must produce tokens"
    outs[0].cached_tokens = cached
    outs[-1].finish_reason = finish  # type: ignore[assignment]
    return outs


def chat(**kwargs: object) -> ChatCompletionRequest:
    return ChatCompletionRequest(model=MODEL, messages=[{"role": "user", "content": "hi"}], **kwargs)


def generation(tok: ModelTokenizer, prompt: Sequence[int] = (1, 2, 3, 4, 5), **body: object) -> Generation:
    return build_generation("req-1", list(prompt), chat(**body), tok)


async def run(
    tok: ModelTokenizer, outputs: Sequence[EngineOutput], gen: Generation | None = None, **body: object
) -> tuple[list[str], Generation, FakeClient, FrontendMetrics]:
    gen = gen or generation(tok, **body)
    client = FakeClient(outputs)
    metrics = FrontendMetrics(MODEL)
    deltas = [d async for d in run_generation(gen, MODEL, client, tok, metrics)]  # type: ignore[arg-type]
    return deltas, gen, client, metrics


def sample(metrics: FrontendMetrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"model": MODEL})


# ---- plain generation -----------------------------------------------------------------------------


async def test_text_equals_decode_of_all_tokens(tok: ModelTokenizer) -> None:
    pieces = ["Hello wor", "ld, héllo ", "你好 🎉", " naïve"]
    outputs = script(tok, pieces)
    deltas, gen, client, _ = await run(tok, outputs)
    all_ids = [t for o in outputs for t in o.token_ids]
    assert "".join(deltas) == tok.decode(all_ids) == "".join(pieces)
    assert all(deltas)  # no empty deltas
    assert gen.finish_reason == "length"
    assert gen.completion_tokens == len(all_ids)
    assert client.closed


async def test_the_request_reaches_the_client(tok: ModelTokenizer) -> None:
    gen = generation(tok, prompt=[9, 8, 7], max_tokens=5, temperature=0.5, seed=3)
    _, _, client, _ = await run(tok, script(tok, ["x"]), gen=gen)
    ((model, req),) = client.requests
    assert model == MODEL
    assert req.request_id == "req-1"
    assert req.prompt_token_ids == [9, 8, 7]
    assert (req.sampling.max_tokens, req.sampling.temperature, req.sampling.seed) == (5, 0.5, 3)


async def test_finish_reason_length_passes_through(tok: ModelTokenizer) -> None:
    _, gen, _, _ = await run(tok, script(tok, ["abc", "def"], finish="length"))
    assert gen.finish_reason == "length"


async def test_eos_finish_stop_passes_through_and_eos_text_is_skipped(tok: ModelTokenizer) -> None:
    outputs = script(tok, ["The end"], finish=None)
    outputs.append(EngineOutput(tok.eos_token_ids[:1], finish_reason="stop"))
    deltas, gen, _, _ = await run(tok, outputs)
    assert "".join(deltas) == "The end"
    assert gen.finish_reason == "stop"
    assert gen.completion_tokens == len(outputs[0].token_ids) + 1


async def test_a_finish_only_output_without_tokens(tok: ModelTokenizer) -> None:
    outputs = [*script(tok, ["abc"], finish=None), EngineOutput([], finish_reason="length")]
    deltas, gen, _, _ = await run(tok, outputs)
    assert "".join(deltas) == "abc"
    assert gen.finish_reason == "length"
    assert gen.completion_tokens == len(outputs[0].token_ids)


async def test_a_character_split_across_outputs_arrives_whole(tok: ModelTokenizer) -> None:
    ids = tok.encode("𝄞!", add_special_tokens=False)
    assert len(ids) > 2
    outputs = [EngineOutput([i]) for i in ids]
    outputs[-1].finish_reason = "length"
    deltas, _, _, _ = await run(tok, outputs)
    assert "".join(deltas) == "𝄞!"
    assert not any("\ufffd" in d for d in deltas)


async def test_usage_and_cached_tokens_come_from_the_first_output(tok: ModelTokenizer) -> None:
    outputs = script(tok, ["one ", "two ", "three"], cached=16)
    _, gen, _, metrics = await run(tok, outputs, gen=generation(tok, prompt=list(range(20))))
    n = sum(len(o.token_ids) for o in outputs)
    assert gen.cached_tokens == 16
    assert gen.usage() == {
        "prompt_tokens": 20,
        "completion_tokens": n,
        "total_tokens": 20 + n,
        "prompt_tokens_details": {"cached_tokens": 16},
    }
    assert sample(metrics, "dynamo_frontend_input_tokens_total") == 20
    assert sample(metrics, "dynamo_frontend_output_tokens_total") == n
    assert sample(metrics, "dynamo_frontend_cached_tokens_sum") == 16
    # one observation per generated sequence, as NVIDIA Dynamo's ISL/OSL histograms
    assert sample(metrics, "dynamo_frontend_input_sequence_tokens_count") == 1
    assert sample(metrics, "dynamo_frontend_input_sequence_tokens_sum") == 20
    assert sample(metrics, "dynamo_frontend_output_sequence_tokens_sum") == n


async def test_latency_metrics_are_observed_per_token(tok: ModelTokenizer) -> None:
    outputs = script(tok, ["one ", "two ", "three"])
    _, gen, _, metrics = await run(tok, outputs)
    assert gen.first_token_at is not None
    assert sample(metrics, "dynamo_frontend_time_to_first_token_seconds_count") == 1
    later = sum(len(o.token_ids) for o in outputs[1:])
    assert sample(metrics, "dynamo_frontend_inter_token_latency_seconds_count") == later


# ---- stop strings ---------------------------------------------------------------------------------


async def test_stop_string_spanning_two_outputs_is_cut_exactly(tok: ModelTokenizer) -> None:
    outputs = script(tok, ["Hello world ST", "OP and more", " text"])
    deltas, gen, client, _ = await run(tok, outputs, stop="STOP")
    assert "".join(deltas) == "Hello world "
    assert gen.finish_reason == "stop"
    assert all("STOP" not in d for d in deltas)
    # the stream is closed right away: the third output is never pulled
    assert client.sent == 2
    assert client.closed


async def test_stop_string_never_appears_even_in_pieces(tok: ModelTokenizer) -> None:
    # the stop string arrives one character per output: nothing of it may be sent before it completes
    pieces = ["abc", " ", "E", "N", "D", "xyz"]
    deltas, gen, _, _ = await run(tok, script(tok, pieces), stop=["END"])
    assert "".join(deltas) == "abc "
    assert gen.finish_reason == "stop"
    assert all(not set(d) & set("END") for d in deltas)


async def test_stop_string_inside_one_output(tok: ModelTokenizer) -> None:
    deltas, gen, _, _ = await run(tok, script(tok, ["the quick STOP brown fox"]), stop="STOP")
    assert "".join(deltas) == "the quick "
    assert gen.finish_reason == "stop"


async def test_stop_string_at_the_very_start_gives_no_text(tok: ModelTokenizer) -> None:
    deltas, gen, _, _ = await run(tok, script(tok, ["STOP", " later"]), stop="STOP")
    assert deltas == []
    assert gen.finish_reason == "stop"


async def test_the_earliest_of_several_stop_strings_wins(tok: ModelTokenizer) -> None:
    deltas, gen, _, _ = await run(
        tok, script(tok, ["one two", " three four"]), stop=["four", "two three", "o"]
    )
    assert "".join(deltas) == ""  # "o" in "one" comes first
    deltas, gen, _, _ = await run(tok, script(tok, ["one two", " three four"]), stop=["four", "two three"])
    assert "".join(deltas) == "one "
    assert gen.finish_reason == "stop"


async def test_multi_byte_stop_string_across_outputs(tok: ModelTokenizer) -> None:
    deltas, gen, _, _ = await run(tok, script(tok, ["héllo 你", "好 🎉 rest"]), stop="你好")
    assert "".join(deltas) == "héllo "
    assert gen.finish_reason == "stop"


async def test_held_back_text_is_released_when_no_stop_matches(tok: ModelTokenizer) -> None:
    # "ST" and then "STO" could each be the start of "STOP": they are held, then released at the end
    pieces = ["abc ST", "O", "!"]
    deltas, gen, _, _ = await run(tok, script(tok, pieces, finish="length"), stop="STOP")
    assert "".join(deltas) == "abc STO!"
    assert gen.finish_reason == "length"
    # while the outcome was open the possible prefix was not sent
    assert "ST" not in deltas[0]


async def test_held_back_text_is_released_on_an_eos_finish(tok: ModelTokenizer) -> None:
    outputs = script(tok, ["fine STO"], finish=None)
    outputs.append(EngineOutput(tok.eos_token_ids[:1], finish_reason="stop"))
    deltas, gen, _, _ = await run(tok, outputs, stop=["STOP"])
    assert "".join(deltas) == "fine STO"
    assert gen.finish_reason == "stop"


async def test_single_character_stops_hold_nothing_back(tok: ModelTokenizer) -> None:
    outputs = script(tok, ["abc", "def", "g.h"])
    deltas, gen, _, _ = await run(tok, outputs, stop=["."])
    assert deltas == ["abc", "def", "g"]
    assert gen.finish_reason == "stop"


async def test_completion_tokens_count_every_generated_token(tok: ModelTokenizer) -> None:
    outputs = script(tok, ["abc", "def STOP ghi", "jkl"])
    _, gen, _, _ = await run(tok, outputs, stop="STOP")
    assert gen.completion_tokens == len(outputs[0].token_ids) + len(outputs[1].token_ids)


# ---- failures -------------------------------------------------------------------------------------


async def test_an_error_finish_raises_500(tok: ModelTokenizer) -> None:
    outputs = script(tok, ["partial"], finish=None)
    outputs.append(EngineOutput([], finish_reason="error"))
    with pytest.raises(OpenAIError) as e:
        await run(tok, outputs)
    assert e.value.status == 500
    assert e.value.type == "server_error"


async def test_an_output_with_an_error_message_raises_500_with_it(tok: ModelTokenizer) -> None:
    outputs = [EngineOutput([], finish_reason="error", error="CUDA out of memory")]
    client = FakeClient(outputs)
    metrics = FrontendMetrics(MODEL)
    gen = generation(tok)
    with pytest.raises(OpenAIError) as e:
        async for _ in run_generation(gen, MODEL, client, tok, metrics):  # type: ignore[arg-type]
            pass
    assert e.value.status == 500
    assert "CUDA out of memory" in e.value.message
    assert client.closed
    assert sample(metrics, "dynamo_frontend_input_tokens_total") == gen.prompt_tokens


async def test_an_abort_finish_raises_503(tok: ModelTokenizer) -> None:
    with pytest.raises(OpenAIError) as e:
        await run(tok, script(tok, ["x"], finish="abort"))
    assert e.value.status == 503


async def test_closing_the_deltas_early_closes_the_worker_stream(tok: ModelTokenizer) -> None:
    client = FakeClient(script(tok, ["one", "two", "three", "four"]))
    deltas = run_generation(generation(tok), MODEL, client, tok, FrontendMetrics(MODEL))  # type: ignore[arg-type]
    assert await deltas.__anext__() == "one"
    await deltas.aclose()  # type: ignore[attr-defined]
    assert client.closed
    assert client.sent == 1


# ---- build_generation -----------------------------------------------------------------------------


def test_prompt_longer_than_the_context_is_400(tok: ModelTokenizer) -> None:
    for n in (tok.context_length, tok.context_length + 10):
        with pytest.raises(OpenAIError) as e:
            build_generation("r", [1] * n, chat(), tok)
        assert e.value.status == 400
        assert e.value.code == "context_length_exceeded"
        assert e.value.param == "messages"
        assert str(n) in e.value.message
    with pytest.raises(OpenAIError) as e:
        build_generation("r", [1] * tok.context_length, CompletionRequest(model=MODEL, prompt=[1]), tok)
    assert e.value.param == "prompt"


def test_max_tokens_past_the_context_is_400_naming_max_tokens(tok: ModelTokenizer) -> None:
    n = 10
    with pytest.raises(OpenAIError) as e:
        build_generation("r", [1] * n, chat(max_tokens=tok.context_length - n + 1), tok)
    assert e.value.status == 400
    assert e.value.param == "max_tokens"
    assert e.value.body()["error"]["type"] == "invalid_request_error"
    # max_completion_tokens is checked the same way
    with pytest.raises(OpenAIError):
        build_generation("r", [1] * n, chat(max_completion_tokens=tok.context_length), tok)


def test_max_tokens_filling_the_context_exactly_is_allowed(tok: ModelTokenizer) -> None:
    gen = build_generation("r", [1] * 10, chat(max_tokens=tok.context_length - 10), tok)
    assert gen.sampling.max_tokens == tok.context_length - 10


def test_default_max_tokens_is_the_rest_of_the_context(tok: ModelTokenizer) -> None:
    for n in (1, 10, tok.context_length - 1):
        assert build_generation("r", [1] * n, chat(), tok).sampling.max_tokens == tok.context_length - n


def test_max_completion_tokens_wins_over_max_tokens(tok: ModelTokenizer) -> None:
    gen = build_generation("r", [1] * 4, chat(max_tokens=20, max_completion_tokens=7), tok)
    assert gen.sampling.max_tokens == 7


def test_completions_default_to_16_tokens(tok: ModelTokenizer) -> None:
    gen = build_generation("r", [1] * 4, CompletionRequest(model=MODEL, prompt="hi"), tok)
    assert gen.sampling.max_tokens == 16


def test_sampling_options_and_stops_are_carried(tok: ModelTokenizer) -> None:
    body = chat(
        temperature=0.0, top_p=0.9, top_k=40, seed=11, ignore_eos=True, min_tokens=3, stop_token_ids=[5, 6],
        stop="END", skip_special_tokens=False,
    )  # fmt: skip
    gen = build_generation("r", [1, 2], body, tok)
    s = gen.sampling
    assert (s.temperature, s.top_p, s.top_k, s.seed, s.ignore_eos, s.min_tokens) == (
        0.0,
        0.9,
        40,
        11,
        True,
        3,
    )
    assert s.stop_token_ids == [5, 6]
    assert gen.stops == ["END"]
    assert gen.skip_special_tokens is False
    assert gen.prompt_tokens == 2
