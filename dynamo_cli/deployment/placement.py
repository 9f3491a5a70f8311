"""Where each worker runs: its GPUs (CUDA_VISIBLE_DEVICES, tensor parallel size) or its CPU cores."""

from __future__ import annotations

import os
import shutil
import subprocess

from dynamo_cli.config.gpus import parse_gpu_list
from dynamo_cli.config.models import WorkerGroupConfig
from dynamo_cli.errors import UsageError


def gpu_count() -> int:
    """GPUs this machine has, from nvidia-smi (0 when there is none)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def worker_envs(
    group: WorkerGroupConfig,
    role: str,
    *,
    engine: str,
    available_gpus: int | None = None,
    cpu_first: int = 0,
    cpu_engines: int | None = None,
) -> list[dict[str, str]]:
    """One environment per worker of a group. GPU lists are split evenly (each worker's share is its
    tensor parallel size); on CPU each vLLM worker gets its own slice of the cores, out of
    ``cpu_engines`` engines on the machine (default: this group's), this group's starting at
    ``cpu_first``."""
    n = group.size
    if group.gpus:
        ids = parse_gpu_list(group.gpus)
        have = gpu_count() if available_gpus is None else available_gpus
        missing = [g for g in ids if g >= have]
        if missing:
            what = f"has {have} GPU(s)" + (f" (0-{have - 1})" if have else "")
            raise UsageError(
                f"{role}.gpus names GPU {missing[0]} but this machine {what}",
                hint="check `nvidia-smi -L`, or leave the GPU list out to run on CPU",
            )
        if n == 0 or len(ids) % n:
            raise UsageError(
                f"{role}.gpus has {len(ids)} GPU(s) for {n} worker(s); they must divide evenly",
                hint=f"e.g. --set {role}.count={len(ids)} (one GPU each) "
                f"or {role}.count=1 (tensor parallel {len(ids)})",
            )
        per = len(ids) // n
        return [{"CUDA_VISIBLE_DEVICES": ",".join(map(str, ids[i * per : (i + 1) * per]))} for i in range(n)]
    if engine != "vllm":
        return [{} for _ in range(n)]
    cores = os.cpu_count() or 1
    total = n if cpu_engines is None else cpu_engines
    if total > cores:
        return [{} for _ in range(n)]  # more engines than cores: let vLLM decide
    per = cores // total
    slots = range(cpu_first, cpu_first + n)
    return [{"VLLM_CPU_OMP_THREADS_BIND": f"{i * per}-{(i + 1) * per - 1}"} for i in slots]
