"""`dynamo role NAME [PROFILE]`: run one role in the foreground (what `dynamo run` spawns)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from dynamo_cli.commands import options as o
from dynamo_cli.errors import UsageError


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
        "Or with the URL `dynamo run --listen ADDR` printed, which carries the endpoints, their credentials "
        "and the deployment's config:",
        "  dynamo role worker --join 'dynamo://SECRET@head:PORT/dynamo?nats=PORT' --index 1",
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
    join: Annotated[
        Optional[str],
        typer.Option(
            help="Join the deployment of this URL (printed by `dynamo run --listen`): its etcd, NATS "
            "and config; --set and the flags still apply on top.",
            show_default=False,
        ),
    ] = None,
) -> int:
    from dynamo_cli.config.loader import load_config
    from dynamo_cli.roles.runner import run_role

    flags = o.profile_flags(model=model, engine=engine, namespace=namespace)
    if join is None:
        return run_role(name.value, load_config(profile, sets=sets, flags=flags), index)
    if profile is not None:
        raise UsageError(
            "--join brings the deployment's own profile; a PROFILE cannot be given with it.",
            "Leave out the profile, and change single keys with --set.",
        )
    from dynamo_cli.deployment.join import load_joined

    return run_role(name.value, load_joined(join, sets, flags), index)
