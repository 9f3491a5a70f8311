"""vLLM on real GPUs (run with `pytest -m gpu` on a machine that has them; never in CI)."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from dynamo_cli.deployment.placement import gpu_count

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(gpu_count() == 0, reason="no NVIDIA GPU here")]


def test_agg_on_one_gpu_answers(tmp_path: Path) -> None:
    from dynamo_cli.deployment.handle import start

    dep = start(tmp_path, "agg", "--workers", "1", "--gpus", "0", timeout=600)
    try:
        client = openai.OpenAI(base_url=dep.base_url, api_key="x", max_retries=0, timeout=120)
        r = client.chat.completions.create(
            model=dep.model, messages=[{"role": "user", "content": "What is the capital of France?"}],  # type: ignore[arg-type]
            max_tokens=30, temperature=0,
        )  # fmt: skip
        assert "Paris" in (r.choices[0].message.content or "")
        assert "device_config=cuda" in dep.log_text() or "cuda" in dep.log_text().lower()
    finally:
        dep.stop()


def test_two_gpus_for_one_worker_is_tensor_parallel_2(tmp_path: Path) -> None:
    if gpu_count() < 2:
        pytest.skip("needs two GPUs")
    from dynamo_cli.deployment.handle import start

    dep = start(tmp_path, "agg", "--workers", "1", "--gpus", "0-1", timeout=600)
    try:
        assert "tensor_parallel_size=2" in dep.log_text()
    finally:
        dep.stop()
