"""Start one role process: resolve its model, build the role, serve until stopped."""

from __future__ import annotations

from dynamo_cli.config.models import DynamoConfig
from dynamo_cli.lifecycle import configure_logging, run_async


def run_role(name: str, cfg: DynamoConfig, index: int = 0) -> int:
    configure_logging(cfg.log_level, prefix=name)
    from dynamo_cli.models.resolve import resolve_model
    from dynamo_cli.roles.base import Role, serve_role

    if name == "planner":  # needs no model
        cfg = cfg.model_copy(update={"planner": cfg.planner.model_copy(update={"enabled": True})})

        async def plan() -> int:
            from dynamo_cli.roles.planner import PlannerRole

            return await serve_role(PlannerRole(cfg), cfg.supervisor.stop_timeout_s)

        return run_async(plan())
    model = resolve_model(cfg.model, cfg.served_model_name)

    async def main() -> int:
        role: Role
        if name in ("worker", "decode"):
            from dynamo_cli.roles.worker import WorkerRole

            role = WorkerRole(cfg, model, index, name=name)
        elif name == "prefill":
            from dynamo_cli.roles.prefill import PrefillRole

            role = PrefillRole(cfg, model, index)
        elif name == "router":
            from dynamo_cli.roles.router import RouterRole

            role = RouterRole(cfg, index)
        else:
            from dynamo_cli.roles.frontend import FrontendRole

            role = FrontendRole(cfg, model)
        return await serve_role(role, cfg.supervisor.stop_timeout_s)

    return run_async(main())
