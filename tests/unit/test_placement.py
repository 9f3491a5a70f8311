"""Where workers run: GPU lists split into per-worker CUDA_VISIBLE_DEVICES, CPU cores into slices."""

from __future__ import annotations

import pytest

from dynamo_cli.config.models import WorkerGroupConfig
from dynamo_cli.errors import UsageError
from dynamo_cli.runtime.placement import worker_envs


def test_gpus_split_evenly_and_each_share_is_a_workers_tp() -> None:
    envs = worker_envs(WorkerGroupConfig(count=2, gpus="0-3"), "workers", engine="vllm", available_gpus=8)
    assert envs == [{"CUDA_VISIBLE_DEVICES": "0,1"}, {"CUDA_VISIBLE_DEVICES": "2,3"}]
    one = worker_envs(WorkerGroupConfig(count=1, gpus="4-5"), "decode", engine="vllm", available_gpus=8)
    assert one == [{"CUDA_VISIBLE_DEVICES": "4,5"}]


def test_a_gpu_that_does_not_exist_is_a_usage_error() -> None:
    with pytest.raises(UsageError) as e:
        worker_envs(WorkerGroupConfig(count=1, gpus="0-3"), "prefill", engine="vllm", available_gpus=2)
    assert e.value.exit_code == 2 and "GPU 2" in e.value.message and "has 2 GPU(s) (0-1)" in e.value.message
    with pytest.raises(UsageError) as e:
        worker_envs(WorkerGroupConfig(count=1, gpus="0"), "workers", engine="vllm", available_gpus=0)
    assert "has 0 GPU(s)" in e.value.message


def test_uneven_splits_are_refused_with_a_hint() -> None:
    with pytest.raises(UsageError) as e:
        worker_envs(WorkerGroupConfig(count=2, gpus="0-2"), "workers", engine="vllm", available_gpus=4)
    assert "divide evenly" in e.value.message and e.value.hint and "count=3" in e.value.hint


def test_cpu_vllm_workers_get_their_own_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    envs = worker_envs(WorkerGroupConfig(count=2), "workers", engine="vllm")
    assert envs == [{"VLLM_CPU_OMP_THREADS_BIND": "0-3"}, {"VLLM_CPU_OMP_THREADS_BIND": "4-7"}]
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert worker_envs(WorkerGroupConfig(count=3), "workers", engine="vllm") == [{}, {}, {}]  # vLLM decides
    assert worker_envs(WorkerGroupConfig(count=2), "workers", engine="mocker") == [{}, {}]
