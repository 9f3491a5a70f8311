"""`dynamo doctor`: can this machine run this profile, and what to do if not. Every check answers PASS,
WARN, FAIL or INFO with one line of detail and one line of fix; none imports vLLM or torch."""

from __future__ import annotations

from typing import Any

from dynamo_cli.config.models import DynamoConfig
from dynamo_cli.doctor import gpu, model, profile, rdma, services, system
from dynamo_cli.doctor.checks import DEADLINE_S, Check, Context, Report, Result, run_checks

CHECKS: tuple[Check, ...] = (
    Check("python", system.check_python),
    Check("vllm", system.check_vllm),
    Check("nixl", system.check_nixl),
    Check("torch", system.check_torch),
    Check("gpus", gpu.check_gpus),
    Check("gpu lists", gpu.check_gpu_lists),
    Check("rdma", rdma.check_rdma),
    Check("ucx", rdma.check_ucx),
    Check("etcd", services.check_etcd),
    Check("nats", services.check_nats),
    Check("ports", services.check_ports),
    Check("model", model.check_model),
    Check("weights", model.check_weights),
    Check("disk", system.check_disk),
    Check("profile", profile.check_disagg),
)


def diagnose(cfg: DynamoConfig, *, deadline_s: float = DEADLINE_S, **parts: Any) -> Report:
    """Run every check on ``cfg``; ``parts`` replace the machine's (nvml, infiniband, environ, which,
    torch_probe) in tests."""
    return run_checks(CHECKS, Context(cfg, **parts), deadline_s=deadline_s)


__all__ = ["CHECKS", "Check", "Context", "Report", "Result", "diagnose", "run_checks"]
