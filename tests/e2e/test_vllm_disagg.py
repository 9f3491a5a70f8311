"""`dynamo run disagg` with two vLLM CPU engines: the decode engine pulls the prompt's KV over NIXL.

Fifty long prompts (1-3k tokens, some sharing a document, some sent together) decode token for token as
an aggregated deployment decodes them, with no fallback and no KV read past its lease; a decode engine
stalled past a (tiny) lease prefills locally instead of reading expired KV; a prefill worker that was
restarted takes work only once the decode worker has handshaken with its new engine.
"""

from __future__ import annotations

import importlib.util
import os
import random
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from dynamo_cli.deployment.handle import Deployment, process_alive, start
from tests.e2e.helpers import child_pids, scrape, wait_for

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="the vLLM engine is not installed"),
]

# bf16 rounding can flip a near-tie between engines with other thread counts, or when the decode engine
# recomputes the last prompt token: float32 leaves a real difference in the KV as the only cause.
FLOAT32 = ("--set", 'vllm.extra_args={"dtype": "float32"}')
MAX_TOKENS = 8
INVALID = "Potentially invalid KV blocks"  # vLLM's word for a pull of KV past its lease


def _prompts(n: int = 50) -> list[str]:
    """Documents of 300-850 random words (~1-3k tokens with the tiny model's tokenizer), each asked
    about up to three times: later prompts share a long prefix with an earlier one."""
    rng = random.Random(14)
    vocab = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randrange(3, 9)))
        for _ in range(500)
    ]
    docs = [" ".join(rng.choice(vocab) for _ in range(rng.randrange(300, 850))) for _ in range(20)]
    return [
        f"{docs[i % 20]}\nQuestion {i}: {' '.join(rng.choice(vocab) for _ in range(8))}?" for i in range(n)
    ]


def _complete(dep: Deployment, prompt: str) -> str:
    """The greedy text (of a random model: compared for equality only, never read)."""
    with openai.OpenAI(base_url=dep.base_url, api_key="x", max_retries=0, timeout=120) as client:
        resp = client.completions.create(
            model=dep.model,
            prompt=prompt,
            max_tokens=MAX_TOKENS,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
    assert resp.usage is not None and resp.usage.completion_tokens == MAX_TOKENS
    return resp.choices[0].text


def _run_sequence(dep: Deployment, prompts: list[str]) -> list[str]:
    """The first 20 one after another, the rest five at a time."""
    out = [_complete(dep, p) for p in prompts[:20]]
    with ThreadPoolExecutor(5) as pool:
        for i in range(20, len(prompts), 5):
            out += list(pool.map(lambda p: _complete(dep, p), prompts[i : i + 5]))
    return out


def _descendants(pid: int) -> list[int]:
    out = []
    for child in child_pids(pid):
        out += [child, *_descendants(child)]
    return out


def _decisions(dep: Deployment) -> dict[tuple[str, str], float]:
    m = scrape(dep.url + "/metrics")
    prefix = "dynamo_disagg_prefill_decisions_total{"
    out = {}
    for key, value in m.items():
        if key.startswith(prefix):
            labels = dict(part.split("=", 1) for part in key[len(prefix) : -1].split(","))
            out[(labels["outcome"].strip('"'), labels["reason"].strip('"'))] = value
    return out


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dynamo_cli.models.tiny import build_tiny_llama

    # Sharpened, so that wrong KV gives other tokens (see build_tiny_llama).
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", weight_scale=8)


def _disagg(tmp: Path, model: Path, *extra: str, env: dict[str, str] | None = None) -> Deployment:
    return start(tmp, "disagg", "--engine", "vllm", "--model", str(model),
                 "--prefill-workers", "1", "--decode-workers", "1", "--set", "router.replicas=0",
                 "--set", "disagg.max_local_prefill_length=256", *FLOAT32, *extra, timeout=300, env=env)  # fmt: skip


@pytest.fixture(scope="module")
def agg_tokens(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    agg = start(tmp_path_factory.mktemp("vllm-agg"), "agg", "--engine", "vllm", "--model", str(tiny_model),
                "--workers", "1", "--set", "router.replicas=0", *FLOAT32, timeout=300)  # fmt: skip
    try:
        return _run_sequence(agg, _prompts())
    finally:
        agg.stop()


@pytest.mark.timeout(900)  # two vLLM deployments start here
def test_fifty_long_prompts_decode_as_an_aggregated_run_does(
    tiny_model: Path, agg_tokens: list[str], tmp_path: Path
) -> None:
    dep = _disagg(tmp_path, tiny_model)
    try:
        got = _run_sequence(dep, _prompts())
        decisions = _decisions(dep)
    finally:
        dep.stop()
    log = dep.log_text()
    assert INVALID not in log
    mismatched = [i for i, (a, b) in enumerate(zip(got, agg_tokens, strict=True)) if a != b]
    assert not mismatched, f"requests {mismatched} decoded other tokens than the aggregated run"
    # No request waited for its prefill until disagg.prefill_timeout_s, or for KV past its lease: either
    # would be a fallback (or INVALID above). How long requests take is benchmarks.disagg's to report.
    assert not [k for k in decisions if k[0] == "fallback"], decisions
    remote = decisions.get(("remote", "long_uncached"), 0)
    assert remote >= 20, decisions  # the first time each document is seen, at least
    assert sum(decisions.values()) == len(got)


@pytest.mark.timeout(600)
def test_a_decode_engine_stalled_past_the_lease_prefills_locally(
    tiny_model: Path, agg_tokens: list[str], tmp_path: Path
) -> None:
    # A 3 s lease; the decode engine's scheduler stalls 2.5 s where each pull starts, which leaves
    # less than the 1 s margin: it must not pull, whatever vLLM's prefill engine still holds.
    dep = _disagg(
        tmp_path, tiny_model, "--set", "disagg.kv_lease_s=3", env={"DYNAMO_TEST_STALL_PULL_S": "2.5"}
    )
    prompts = _prompts()[:3]
    try:
        got = [_complete(dep, p) for p in prompts]
        decisions = _decisions(dep)
    finally:
        dep.stop()
    assert got == agg_tokens[:3]
    assert decisions == {("fallback", "kv_lease"): 3}, decisions
    log = dep.log_text()
    assert INVALID not in log
    assert log.count("prefilling locally (kv_lease)") == 1  # logged once, then counted


@pytest.mark.timeout(600)
def test_a_restarted_prefill_worker_is_handshaken_before_it_gets_work(
    tiny_model: Path, agg_tokens: list[str], tmp_path: Path
) -> None:
    dep = _disagg(tmp_path, tiny_model)
    prompts = _prompts()
    try:
        before = [_complete(dep, p) for p in prompts[:3]]
        old = dep.pid("prefill-0")
        engine = _descendants(old)  # vLLM's engine core and worker
        assert len(engine) >= 2
        os.kill(old, signal.SIGKILL)  # the launcher starts a new one: a new engine
        wait_for(lambda: not any(process_alive(p) for p in engine), 30, "the old engine's processes to exit")
        wait_for(lambda: dep.log_text().count("pulling prefill work") >= 2, 180, "the new prefill worker")
        after = [_complete(dep, p) for p in prompts[3:8]]
        decisions = _decisions(dep)
    finally:
        dep.stop()
    assert before + after == agg_tokens[:8]
    assert decisions == {("remote", "long_uncached"): 8}, decisions  # no fallback, no handshake paid
    log = dep.log_text()
    # The new engine took work only once the decode worker had handshaken with it (and told it so).
    pulling = [ln for ln in log.splitlines() if "pulling prefill work" in ln]
    assert len(pulling) == 2 and "handshaken by 1 decode worker(s)" in pulling[-1], pulling
    assert "handshake_setup_failed" not in log and "handshake_failed" not in log and INVALID not in log


@pytest.mark.timeout(900)
def test_smollm2_answers_as_an_aggregated_run_does(tmp_path: Path) -> None:
    """The real chat model (float32), a shorter sequence: two ~1.3k-token documents, three questions
    each (the later two share the document's prefix)."""
    from benchmarks.workload import text

    rng = random.Random(5)
    docs = [text(rng, 1300) for _ in range(2)]
    chats = [f"Document:\n{docs[i % 2]}\nQuestion {i}: {text(rng, 12)}?" for i in range(6)]

    def answers(dep: Deployment) -> list[str]:
        out = []
        with openai.OpenAI(base_url=dep.base_url, api_key="x", max_retries=0, timeout=300) as client:
            for chat in chats:
                resp = client.chat.completions.create(
                    model=dep.model,
                    messages=[{"role": "user", "content": chat}],
                    max_tokens=16,
                    temperature=0,
                )
                out.append(resp.choices[0].message.content or "")
        return out

    agg = start(tmp_path, "agg", "--engine", "vllm", "--workers", "1", "--set", "router.replicas=0",
                *FLOAT32, timeout=300)  # fmt: skip
    try:
        expected = answers(agg)
    finally:
        agg.stop()
    dep = start(tmp_path, "disagg", "--engine", "vllm", "--set", "router.replicas=0", *FLOAT32,
                timeout=300)  # fmt: skip
    try:
        got = answers(dep)
        decisions = _decisions(dep)
    finally:
        dep.stop()
    assert got == expected
    assert decisions.get(("remote", "long_uncached")) == 2 and not [
        k for k in decisions if k[0] == "fallback"
    ], decisions
    assert INVALID not in dep.log_text()
