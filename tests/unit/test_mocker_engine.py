"""MockerEngine end to end: sampling, stopping, prefix caching, scheduling, aborts, timing, KV events."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable

import pytest

from dynamo_cli.config.models import MockerConfig
from dynamo_cli.engines.mocker import MockerEngine
from dynamo_cli.engines.mocker.timing import prefill_ms
from dynamo_cli.kv.hashing import sequence_block_hashes
from dynamo_cli.transport.wire import EngineOutput, EngineRequest, KvEvent, SamplingOptions

VOCAB = 1000
EOS = 2
_ids = itertools.count()

MakeEngine = Callable[..., MockerEngine]


class FakeClock:
    """Simulated time for the scheduler: a step's wait advances it at once and is recorded."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []  # one per scheduler step: its modelled duration

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)  # the consumers run, as they would while a real step ran


@pytest.fixture
async def make_engine() -> AsyncIterator[MakeEngine]:
    engines: list[MockerEngine] = []

    def make(clock: FakeClock | None = None, **overrides: object) -> MockerEngine:
        overrides.setdefault("speedup_ratio", 1000.0)
        cfg = MockerConfig(**overrides)
        engine = MockerEngine(cfg, vocab_size=VOCAB, eos_token_ids=[EOS, 3], clock=clock)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.close()


def request(prompt: list[int], max_tokens: int = 8, **sampling: object) -> EngineRequest:
    return EngineRequest(f"req-{next(_ids)}", prompt, SamplingOptions(max_tokens=max_tokens, **sampling))


async def collect(engine: MockerEngine, req: EngineRequest) -> tuple[list[int], list[EngineOutput]]:
    outputs = [out async for out in engine.generate(req)]
    return [t for o in outputs for t in o.token_ids], outputs


def prompt(n: int, start: int = 0) -> list[int]:
    return [(start + i * 7) % VOCAB for i in range(n)]


async def test_temperature_zero_is_a_function_of_the_prompt(make_engine: MakeEngine) -> None:
    a, b = make_engine(), make_engine()
    p = prompt(40)
    t1, _ = await collect(a, request(p, 16, temperature=0.0))
    t2, _ = await collect(b, request(p, 16, temperature=0.0))
    t3, _ = await collect(a, request(prompt(40, 1), 16, temperature=0.0))
    assert t1 == t2
    assert t1 != t3
    assert len(t1) == 16
    assert all(0 <= t < VOCAB and t not in (EOS, 3) for t in t1 + t3)


async def test_seed_makes_sampling_reproducible(make_engine: MakeEngine) -> None:
    e = make_engine()
    p = prompt(20)
    seeded = [(await collect(e, request(p, 16, temperature=0.9, seed=s)))[0] for s in (5, 5, 6)]
    assert seeded[0] == seeded[1]
    assert seeded[0] != seeded[2]
    other_prompt, _ = await collect(e, request(prompt(20, 3), 16, temperature=0.9, seed=5))
    assert other_prompt != seeded[0]
    unseeded = [(await collect(e, request(p, 16, temperature=0.9)))[0] for _ in range(2)]
    assert unseeded[0] != unseeded[1]


@pytest.mark.parametrize(
    "sampling",
    [
        {"temperature": 0.0},
        {"temperature": 0.9, "seed": 11},
        {"temperature": 0.0, "top_p": 0.3, "logprobs": 3},
    ],
)
async def test_a_request_resent_with_its_output_so_far_continues_exactly(
    make_engine: MakeEngine, sampling: dict[str, object]
) -> None:
    """What request migration relies on: the next token depends on the tokens so far, not on where
    the prompt ended, so another engine given prompt + output continues the same stream."""
    a, b = make_engine(), make_engine()
    p = prompt(40)
    whole, outs = await collect(a, request(p, 24, **sampling))
    rest, rest_outs = await collect(b, request(p + whole[:9], 24 - 9, **sampling))
    assert whole[:9] + rest == whole
    if "logprobs" in sampling:
        lps = [lp for o in outs for lp in o.logprobs or []]
        assert lps[9:] == [lp for o in rest_outs for lp in o.logprobs or []]


async def test_top_p_narrows_candidates(make_engine: MakeEngine) -> None:
    e = make_engine()
    one, _ = await collect(e, request(prompt(10), 20, temperature=0.0, top_p=0.0005))
    assert len(set(one)) == 1  # ceil(0.0005 * 998) == 1 candidate
    few, _ = await collect(e, request(prompt(10), 200, temperature=0.0, top_p=0.005))
    assert 1 < len(set(few)) <= 5
    wide, _ = await collect(e, request(prompt(10), 200, temperature=0.0))
    assert len(set(wide)) > 50


async def test_vocab_size_in_config_overrides_and_eos_is_never_sampled(make_engine: MakeEngine) -> None:
    e = make_engine(vocab_size=5)  # candidates: 0, 1, 4
    tokens, _ = await collect(e, request(prompt(10), 300, temperature=0.0))
    assert set(tokens) == {0, 1, 4}


async def test_max_tokens_ends_with_length(make_engine: MakeEngine) -> None:
    tokens, outputs = await collect(make_engine(), request(prompt(30), 13))
    assert len(tokens) == 13
    assert outputs[-1].finish_reason == "length"
    assert all(o.finish_reason is None for o in outputs[:-1])


async def test_eos_rate_one_stops_at_once_unless_ignored(make_engine: MakeEngine) -> None:
    e = make_engine(eos_rate=1.0)
    tokens, outputs = await collect(e, request(prompt(30), 10))
    assert tokens == [EOS]
    assert outputs[-1].finish_reason == "stop"
    tokens, outputs = await collect(e, request(prompt(30), 10, ignore_eos=True))
    assert len(tokens) == 10 and EOS not in tokens
    assert outputs[-1].finish_reason == "length"


async def test_min_tokens_delays_eos(make_engine: MakeEngine) -> None:
    e = make_engine(eos_rate=1.0)
    tokens, outputs = await collect(e, request(prompt(30), 10, min_tokens=4))
    assert len(tokens) == 5
    assert EOS not in tokens[:4] and tokens[4] == EOS
    assert outputs[-1].finish_reason == "stop"


async def test_partial_eos_rate_stops_some_requests_early(make_engine: MakeEngine) -> None:
    e = make_engine(eos_rate=0.2)
    results = await asyncio.gather(*(collect(e, request(prompt(10, s), 50)) for s in range(20)))
    reasons = [outs[-1].finish_reason for _, outs in results]
    assert "stop" in reasons
    for tokens, outs in results:
        if outs[-1].finish_reason == "stop":
            assert tokens[-1] == EOS


async def test_stop_token_ids_end_the_request(make_engine: MakeEngine) -> None:
    e = make_engine()
    p = prompt(10)
    tokens, _ = await collect(e, request(p, 50, temperature=0.0))
    stop_at = tokens[5]
    first = tokens.index(stop_at)
    stopped, outs = await collect(e, request(p, 50, temperature=0.0, stop_token_ids=[stop_at]))
    assert stopped == tokens[: first + 1]
    assert outs[-1].finish_reason == "stop"


async def test_logit_bias_bans_and_forces_tokens(make_engine: MakeEngine) -> None:
    e = make_engine(eos_rate=0.5)
    p = prompt(10)
    few, _ = await collect(e, request(p, 200, temperature=0.0, top_p=0.005, ignore_eos=True))
    common = sorted(set(few))
    assert len(common) > 1
    banned, _ = await collect(e, request(p, 200, temperature=0.0, top_p=0.005, ignore_eos=True,
                                         logit_bias={common[0]: -100.0, common[1]: -100}))  # fmt: skip
    assert len(banned) == 200 and not {common[0], common[1]} & set(banned)
    forced, outs = await collect(e, request(p, 30, logit_bias={777: 100.0, EOS: -100.0}))
    assert forced == [777] * 30 and outs[-1].finish_reason == "length"  # EOS banned: no early stop
    mild, _ = await collect(e, request(p, 200, temperature=0.0, top_p=0.005, ignore_eos=True,
                                       logit_bias={common[0]: -5.0}))  # fmt: skip
    assert mild == few  # a bias the simulation cannot weigh changes nothing


async def test_repeated_prompt_reports_cached_tokens(make_engine: MakeEngine) -> None:
    e = make_engine()
    p = prompt(100)
    _, first = await collect(e, request(p, 4))
    _, second = await collect(e, request(p, 4))
    assert first[0].cached_tokens == 0
    assert second[0].cached_tokens == 96  # 6 full blocks of 16
    assert all(o.cached_tokens is None for o in second[1:])
    exact = prompt(64, 5)
    await collect(e, request(exact, 2))
    _, again = await collect(e, request(exact, 2))
    assert again[0].cached_tokens == 48  # never the whole prompt


async def test_no_prefix_caching_means_no_cached_tokens(make_engine: MakeEngine) -> None:
    events: list[KvEvent] = []
    e = make_engine(enable_prefix_caching=False)
    await e.start(events.append)
    p = prompt(100)
    await collect(e, request(p, 4))
    _, second = await collect(e, request(p, 4))
    assert second[0].cached_tokens == 0
    assert events == []


async def test_many_concurrent_requests_complete(make_engine: MakeEngine) -> None:
    e = make_engine(max_num_seqs=64, max_num_batched_tokens=2048)
    reqs = [request(prompt(50 + i, i), 20 + i % 7) for i in range(200)]
    results = await asyncio.gather(*(collect(e, r) for r in reqs))
    for r, (tokens, outs) in zip(reqs, results, strict=True):
        assert len(tokens) == r.sampling.max_tokens
        assert outs[-1].finish_reason == "length"
    load = e.load()
    assert (load.running, load.waiting, load.active_blocks) == (0, 0, 0)


async def test_long_prompt_is_prefilled_in_chunks(make_engine: MakeEngine) -> None:
    e = make_engine(max_num_batched_tokens=64, block_size=16, num_blocks=64)
    p = prompt(500)
    tokens, outs = await collect(e, request(p, 5, temperature=0.0))
    assert len(tokens) == 5 and outs[-1].finish_reason == "length"
    ref, _ = await collect(make_engine(), request(p, 5, temperature=0.0))
    assert tokens == ref


async def test_preemption_under_tiny_cache_completes_everything(
    make_engine: MakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="dynamo_cli.engines.mocker.engine")
    tiny = make_engine(num_blocks=16, block_size=16)  # 256 token slots
    roomy = make_engine()
    reqs = [request(prompt(40, i), 60, temperature=0.0) for i in range(8)]  # 100 tokens each
    results = await asyncio.gather(*(collect(tiny, r) for r in reqs))
    assert any("preempted" in rec.getMessage() for rec in caplog.records)
    for r, (tokens, outs) in zip(reqs, results, strict=True):
        assert outs[-1].finish_reason == "length"
        expected, _ = await collect(roomy, request(r.prompt_token_ids, 60, temperature=0.0))
        assert tokens == expected  # recomputation does not change the sequence
    assert tiny.load().active_blocks == 0


async def test_sequence_outgrowing_the_cache_ends_with_length(make_engine: MakeEngine) -> None:
    e = make_engine(num_blocks=16, block_size=16)
    tokens, outs = await collect(e, request(prompt(250), 100))
    assert outs[-1].finish_reason == "length"
    assert 0 < len(tokens) < 100
    assert e.load().active_blocks == 0


async def test_impossible_prompt_errors_at_once(make_engine: MakeEngine) -> None:
    clock = FakeClock()
    e = make_engine(num_blocks=16, block_size=16, clock=clock)
    tokens, outs = await asyncio.wait_for(collect(e, request(prompt(257), 4)), 2)
    assert clock.sleeps == []  # refused as it came in: not one scheduler step ran for it
    assert tokens == []
    assert outs[-1].finish_reason == "error"
    assert outs[-1].error and "257" in outs[-1].error


async def test_invalid_requests_error(make_engine: MakeEngine) -> None:
    e = make_engine()
    _, outs = await collect(e, request([], 4))
    assert outs[-1].finish_reason == "error"
    _, outs = await collect(e, request(prompt(5), 0))
    assert outs[-1].finish_reason == "error"


async def test_abort_ends_stream_and_frees_blocks(make_engine: MakeEngine) -> None:
    e = make_engine(speedup_ratio=100.0)
    req = request(prompt(200), 100_000, ignore_eos=True)
    stream = e.generate(req)
    first = await anext(stream)
    assert first.finish_reason is None
    assert e.load().active_blocks > 0 and e.load().running == 1
    await e.abort(req.request_id)
    rest = [o async for o in stream]
    assert rest[-1].finish_reason == "abort"
    load = e.load()
    assert (load.running, load.active_blocks) == (0, 0)


async def test_leaving_the_stream_aborts(make_engine: MakeEngine) -> None:
    e = make_engine(speedup_ratio=100.0)
    stream = e.generate(request(prompt(200), 100_000))
    await anext(stream)
    await stream.aclose()
    assert e.load().active_blocks == 0 and e.load().running == 0

    started = asyncio.Event()

    async def consume() -> None:
        async for _ in e.generate(request(prompt(200, 1), 100_000)):
            started.set()

    task = asyncio.create_task(consume(), name="consumer")
    await started.wait()
    assert e.load().running == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert e.load().active_blocks == 0 and e.load().running == 0


async def test_close_aborts_in_flight_streams(make_engine: MakeEngine) -> None:
    e = make_engine(speedup_ratio=100.0)
    await e.start()
    stream = e.generate(request(prompt(50), 100_000))
    await anext(stream)
    await e.close()
    rest = [o async for o in stream]
    assert rest[-1].finish_reason == "abort"
    _, outs = await collect(e, request(prompt(5), 1))  # a closed engine takes no more work
    assert outs[-1].finish_reason == "error"


async def test_first_token_time_follows_prefill_model(make_engine: MakeEngine) -> None:
    clock = FakeClock()
    e = make_engine(speedup_ratio=1.0, clock=clock)
    await e.start()
    expected_s = prefill_ms(1000, MockerConfig().prefill_ms) / 1000
    stream = e.generate(request(prompt(1000), 1))
    await anext(stream)
    assert clock.now == pytest.approx(expected_s)  # the first token came after the modelled prefill
    assert clock.sleeps == [pytest.approx(expected_s)]  # one step, the whole prompt
    await stream.aclose()


async def test_steps_take_real_time_on_the_default_clock(make_engine: MakeEngine) -> None:
    e = make_engine(speedup_ratio=1.0)
    await e.start()
    expected_s = prefill_ms(1000, MockerConfig().prefill_ms) / 1000
    started = time.monotonic()
    stream = e.generate(request(prompt(1000), 1))
    await anext(stream)
    elapsed = time.monotonic() - started
    await stream.aclose()
    assert elapsed >= 0.8 * expected_s  # the step was waited out (a lower bound: a busy machine is slower)


async def test_kv_events_reach_the_sink(make_engine: MakeEngine) -> None:
    events: list[KvEvent] = []
    e = make_engine()
    await e.start(events.append)
    p = prompt(40)  # 2 full blocks of 16
    tokens, _ = await collect(e, request(p, 40, ignore_eos=True))
    stored = [h for ev in events if ev.kind == "stored" for h in ev.block_hashes]
    # KV holds the prompt and every output but the last: 79 tokens, 4 full blocks.
    assert stored == sequence_block_hashes((p + tokens)[:79], 16)
    assert events[0].token_ids == p[:32] and events[0].parent_hash is None
    assert [ev.event_id for ev in events] == list(range(1, len(events) + 1))
    e.reset_prefix_cache()
    assert events[-1].kind == "cleared"


async def test_duplicate_request_id_is_rejected(make_engine: MakeEngine) -> None:
    e = make_engine(speedup_ratio=100.0)
    req = request(prompt(10), 100_000)
    stream = e.generate(req)
    await anext(stream)
    _, outs = await collect(e, EngineRequest(req.request_id, prompt(5), SamplingOptions(max_tokens=1)))
    assert outs[-1].finish_reason == "error"
    await stream.aclose()


async def test_scheduler_bug_fails_requests_instead_of_hanging(
    make_engine: MakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    e = make_engine()

    def broken() -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(e, "_schedule", broken)
    _, outs = await asyncio.wait_for(collect(e, request(prompt(5), 3)), 2)
    assert outs[-1].finish_reason == "error"
    monkeypatch.undo()
    tokens, _ = await asyncio.wait_for(collect(e, request(prompt(5), 3)), 2)
    assert len(tokens) == 3  # the scheduler task survived


async def test_prefill_for_a_remote_decode_hands_over_all_but_the_last_token(make_engine: MakeEngine) -> None:
    engine = make_engine(block_size=16)
    req = request(prompt(100), 1, temperature=0.0)
    req.kv_transfer_params = {"do_remote_decode": True}
    _, outputs = await collect(engine, req)
    assert outputs[-1].kv_transfer_params == {"remote_tokens": 99}
    _, plain = await collect(engine, request(prompt(100, 3), 1))
    assert plain[-1].kv_transfer_params is None


async def test_remote_kv_skips_the_prefill_and_changes_no_token(make_engine: MakeEngine) -> None:
    # Speedup 1: a 2000-token prefill takes ~50 ms; with 1999 tokens' KV from elsewhere one token is left.
    local_clock, remote_clock = FakeClock(), FakeClock()
    local = make_engine(speedup_ratio=1.0, clock=local_clock)
    remote = make_engine(speedup_ratio=1.0, clock=remote_clock)
    p = prompt(2000)
    want, _ = await collect(local, request(p, 4, temperature=0.0))
    events: list[KvEvent] = []
    await remote.start(on_kv_event=events.append)
    req = request(p, 4, temperature=0.0)
    req.kv_transfer_params = {"remote_tokens": 1999}
    got, outputs = await collect(remote, req)
    assert got == want
    assert outputs[0].cached_tokens == 0  # a prefix-cache hit is not what happened
    assert local_clock.sleeps[0] == pytest.approx(prefill_ms(2000, MockerConfig().prefill_ms) / 1000)
    local_s, remote_s = sum(local_clock.sleeps), sum(remote_clock.sleeps)  # simulated seconds
    assert remote_s < local_s - 0.03, (remote_clock.sleeps, local_clock.sleeps)
    stored = [h for e in events if e.kind == "stored" for h in e.block_hashes]
    assert stored[:124] == sequence_block_hashes(p, 16)[:124]  # the taken-over blocks are cached now
