"""Where workers run: GPU lists split into per-worker CUDA_VISIBLE_DEVICES, CPU cores into slices."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynamo_cli.config.models import WorkerGroupConfig
from dynamo_cli.deployment.placement import worker_envs
from dynamo_cli.errors import UsageError


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


def test_disagg_gpu_flags_give_one_worker_per_group_with_the_groups_gpus_as_tp() -> None:
    from dynamo_cli.config.loader import load_config

    cfg = load_config("disagg", flags={"prefill_workers.gpus": "0-3", "workers.gpus": "4-5"})
    pre = worker_envs(cfg.prefill_workers, "prefill_workers", engine="vllm", available_gpus=8)
    dec = worker_envs(cfg.workers, "workers", engine="vllm", available_gpus=8)
    assert pre == [{"CUDA_VISIBLE_DEVICES": "0,1,2,3"}] and dec == [{"CUDA_VISIBLE_DEVICES": "4,5"}]


def test_an_explicit_tp_sets_how_many_workers_share_the_gpus() -> None:
    group = WorkerGroupConfig(count=1, gpus="0-3", tensor_parallel_size=2)
    assert group.size == 2
    envs = worker_envs(group, "prefill_workers", engine="vllm", available_gpus=4)
    assert envs == [{"CUDA_VISIBLE_DEVICES": "0,1"}, {"CUDA_VISIBLE_DEVICES": "2,3"}]
    with pytest.raises(ValueError, match="tensor parallel 3"):
        WorkerGroupConfig(gpus="0-3", tensor_parallel_size=3)


def test_cpu_engines_of_both_groups_get_separate_cores(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from dynamo_cli.config.loader import load_config
    from dynamo_cli.deployment.launcher import role_specs

    monkeypatch.setattr("os.cpu_count", lambda: 4)
    cfg = load_config("disagg", flags={"engine": "vllm", "prefill_workers.count": 2})
    specs = role_specs(cfg, tmp_path / "config.yaml", tmp_path)
    binds = {s.name: s.env.get("VLLM_CPU_OMP_THREADS_BIND") for s in specs if s.env}
    assert binds == {"decode-0": "0-0", "prefill-0": "1-1", "prefill-1": "2-2"}
