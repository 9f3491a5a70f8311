"""`dynamo role NAME [PROFILE]`: run one role in the foreground (what `dynamo run` spawns)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

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
    join: o.Join = None,
) -> int:
    from dynamo_cli.config.loader import load_config
    from dynamo_cli.roles.runner import run_role

    flags = o.profile_flags(model=model, engine=engine, namespace=namespace)
    if join is None:
        cfg = load_config(profile, sets=sets, flags=flags)
        return _again_after_a_lost_lease(run_role(name.value, cfg, index), cfg.infra.etcd)
    if profile is not None:
        raise UsageError(
            "--join brings the deployment's own profile; a PROFILE cannot be given with it.",
            "Leave out the profile, and change single keys with --set.",
        )
    from dynamo_cli.deployment.join import load_joined

    cfg = load_joined(join, sets, flags)
    return _again_after_a_lost_lease(run_role(name.value, cfg, index), cfg.infra.etcd)


def _again_after_a_lost_lease(code: int, etcd: str) -> int:
    """A role run by hand (no launcher to restart it) that lost its discovery lease, cut off from etcd
    for longer than the lease: once etcd answers again, the same command starts afresh (exec) and the
    role joins again under a new lease. Under `dynamo run`, the launcher restarts it instead."""
    import os
    import sys
    import time

    from dynamo_cli.deployment.servers import etcd_version
    from dynamo_cli.lifecycle import LEASE_LOST_EXIT, PARENT_PID_ENV

    if code != LEASE_LOST_EXIT or os.environ.get(PARENT_PID_ENV):
        return code
    typer.echo("The discovery lease was lost; waiting for etcd to answer again to rejoin...", err=True)
    while etcd_version(etcd, timeout=1.0) is None:
        time.sleep(1.0)
    os.execv(sys.executable, [sys.executable, "-m", "dynamo_cli", *sys.argv[1:]])
    return code  # pragma: no cover  (exec does not return)
