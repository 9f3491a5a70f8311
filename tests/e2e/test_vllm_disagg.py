"""`dynamo run disagg` with two vLLM CPU engines: the decode engine pulls the prompt's KV over NIXL."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from dynamo_cli.runtime.handle import Deployment, start
from tests.e2e.helpers import scrape

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="the vLLM engine is not installed"),
]


def _complete(dep: Deployment, prompt: str) -> str:
    """Greedy text (a random model: compared for equality only, never read)."""
    client = openai.OpenAI(base_url=dep.base_url, api_key="x", max_retries=0, timeout=120)
    resp = client.completions.create(
        model=dep.model, prompt=prompt, max_tokens=12, temperature=0, extra_body={"ignore_eos": True}
    )
    assert resp.usage is not None and resp.usage.completion_tokens == 12
    return resp.choices[0].text


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dynamo_cli.models.tiny import build_tiny_llama

    # Sharpened, so that wrong KV gives other tokens (see build_tiny_llama).
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", weight_scale=8)


@pytest.fixture(scope="module")
def disagg(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    d = start(tmp_path_factory.mktemp("vllm-disagg"), "disagg", "--engine", "vllm", "--model", str(tiny_model),
              "--prefill-workers", "1", "--decode-workers", "1", "--set", "router.replicas=0",
              "--set", "disagg.max_local_prefill_length=64", *FLOAT32, timeout=300)  # fmt: skip
    yield d
    d.stop()


# bf16 rounding can flip a near-tie when the decode engine recomputes the last prompt token.
FLOAT32 = ("--set", 'vllm.extra_args={"dtype": "float32"}')
PROMPTS = [f"Story {k}: " + " ".join(f"word{k}{i}" for i in range(120)) for k in range(3)]


@pytest.mark.timeout(600)  # two vLLM deployments start here
def test_remote_prefill_over_nixl_decodes_what_an_aggregated_run_does(
    disagg: Deployment, tiny_model: Path, tmp_path: Path
) -> None:
    got = [_complete(disagg, p) for p in PROMPTS]
    m = scrape(disagg.url + "/metrics")
    remote = f'dynamo_disagg_prefill_decisions_total{{model="{disagg.model}",outcome="remote",reason="long_uncached"}}'
    assert m.get(remote) == len(PROMPTS), {k: v for k, v in m.items() if "disagg" in k}
    moved = sum(v for k, v in m.items() if k.startswith("dynamo_disagg_kv_transfer_bytes_total"))
    assert moved > 0
    agg = start(tmp_path, "agg", "--engine", "vllm", "--model", str(tiny_model), "--workers", "1",
                "--set", "router.replicas=0", *FLOAT32, timeout=300)  # fmt: skip
    try:
        assert [_complete(agg, p) for p in PROMPTS] == got
    finally:
        agg.stop()
