"""`dynamo role NAME [PROFILE]`: run one role in the foreground (what `dynamo run` spawns)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from dynamo_cli.commands import options as o


class RoleName(str, Enum):
    frontend = "frontend"
    router = "router"
    worker = "worker"
    decode = "decode"
    prefill = "prefill"
    planner = "planner"


HELP = "\n\n".join(
    [
        "Run one role in the foreground, e.g. a worker on another machine joining a deployment:",
        "  dynamo role worker agg --set infra.etcd=http://head:2379 --set infra.nats=nats://head:4222",
        "  dynamo role prefill disagg --set infra.etcd=http://head:2379 --set infra.nats=nats://head:4222",
        "worker and decode are the same role (a decode worker is a worker with disagg.remote_prefill on); "
        "prefill pulls work from the deployment's prefill queue; planner scales the worker groups of a "
        "deployment written by `dynamo deploy k8s`, from inside its cluster (a local deployment's planner "
        "runs inside `dynamo run --planner`).",
        "The role uses the etcd and NATS the profile names ('auto' means the default local ports); it never "
        "spawns them. SIGINT/SIGTERM drain in-flight work, a second one exits at once.",
        o.PRECEDENCE_HELP,
    ]
)


def role(
    name: Annotated[RoleName, typer.Argument(help="Which role.")],
    profile: o.Profile = None,
    sets: o.Sets = None,
    model: o.Model = None,
    engine: o.Engine = None,
    namespace: o.Namespace = None,
    index: Annotated[int, typer.Option(help="Instance index (names logs, seeds the mocker).")] = 0,
) -> int:
    from dynamo_cli.config.loader import load_config
    from dynamo_cli.roles.runner import run_role

    cfg = load_config(
        profile, sets=sets, flags=o.profile_flags(model=model, engine=engine, namespace=namespace)
    )
    return run_role(name.value, cfg, index)
