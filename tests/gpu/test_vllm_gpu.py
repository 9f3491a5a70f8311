"""vLLM on real GPUs (run with `pytest -m gpu` on a machine that has them; never in CI).

What is checked is where the engines run, as the driver sees it (nvidia-smi's compute processes that
belong to the deployment), not what the logs say."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import openai
import pytest

from dynamo_cli.deployment.handle import Deployment
from dynamo_cli.deployment.placement import gpu_count
from tests.e2e.helpers import child_pids

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(gpu_count() == 0, reason="no NVIDIA GPU here")]


def _descendants(pids: list[int]) -> set[int]:
    seen: set[int] = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo += child_pids(pid)
    return seen


def gpus_in_use(dep: Deployment) -> set[str]:
    """UUIDs of the GPUs on which a process of this deployment holds a CUDA context."""
    smi = shutil.which("nvidia-smi")
    assert smi is not None
    out = subprocess.run(
        [smi, "--query-compute-apps=gpu_uuid,pid", "--format=csv,noheader"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    ours = _descendants([dep.proc.pid, *dep.all_pids()])
    return {
        uuid.strip()
        for uuid, pid in (line.split(",") for line in out.splitlines() if line)
        if int(pid) in ours
    }


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
        assert len(gpus_in_use(dep)) == 1  # the engine runs on a GPU, and on one only
    finally:
        dep.stop()


def test_two_gpus_for_one_worker_is_tensor_parallel_2(tmp_path: Path) -> None:
    if gpu_count() < 2:
        pytest.skip("needs two GPUs")
    from dynamo_cli.deployment.handle import start

    dep = start(tmp_path, "agg", "--workers", "1", "--gpus", "0-1", timeout=600)
    try:
        assert len(gpus_in_use(dep)) == 2  # one worker's engine spans both: tensor parallel 2
        assert "tensor_parallel_size=2" in dep.log_text()
    finally:
        dep.stop()
