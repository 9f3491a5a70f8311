"""`dynamo doctor [PROFILE]`: can this machine run the profile, and what to do if not."""

from __future__ import annotations

from typing import Annotated

import typer

from dynamo_cli.commands import options as o
from dynamo_cli.errors import UsageError

HELP = f"""Check in seconds whether this machine can run a profile, and say what to do if not.

Each check answers PASS, WARN (runs, but not as it could), FAIL (the profile cannot run) or INFO (not
needed by this profile), with one line of fix: Python and packages (vLLM, NIXL, torch and its CUDA),
GPUs through NVML and the profile's GPU lists, RDMA devices and UCX transports, etcd and NATS (reachable
or spawnable), the frontend port, the model's tokenizer and chat template, disk space for caches, and
settings that make no sense together (prefill workers while remote prefill is off).

Exit status 0 when nothing FAILs, 1 otherwise. It downloads nothing, starts nothing and never
imports vLLM or torch.

Examples:

  dynamo doctor                                  # the agg profile (vLLM, embedded model)

  dynamo doctor disagg --engine vllm --prefill-gpus 0-3 --decode-gpus 4-5

  dynamo doctor agg --model Qwen/Qwen3-0.6B --port 8080

  dynamo doctor ./my-profile.yaml --set infra.etcd=http://head:2379

  dynamo doctor --join 'dynamo://SECRET@head:PORT/dynamo?nats=PORT'   # before joining a deployment

  dynamo doctor --json | jq '.checks[] | select(.status != "PASS")'

{o.PRECEDENCE_HELP}
"""


def doctor(
    profile: Annotated[
        str, typer.Argument(help="Built-in profile name (agg, disagg) or path to a YAML profile.")
    ] = "agg",
    sets: o.Sets = None,
    model: o.Model = None,
    engine: o.Engine = None,
    port: o.Port = None,
    gpus: o.Gpus = None,
    prefill_gpus: o.PrefillGpus = None,
    join: o.Join = None,
    json_output: o.Json = False,
) -> int:
    from dynamo_cli.config.loader import load_config
    from dynamo_cli.console import emit_json
    from dynamo_cli.doctor import diagnose
    from dynamo_cli.doctor.render import render

    flags = o.profile_flags(model=model, engine=engine, port=port, gpus=gpus, prefill_gpus=prefill_gpus)
    if join is None:
        cfg = load_config(profile, sets=sets, flags=flags)
    else:
        from dynamo_cli.deployment.join import load_joined

        if profile != "agg":
            raise UsageError(
                "--join checks against the deployment's own profile; a PROFILE cannot be given with it.",
                "Leave out the profile.",
            )
        cfg, profile = load_joined(join, sets, flags), "joined deployment"
    report = diagnose(cfg)
    if json_output:
        emit_json({"profile": profile, **report.as_dict()})
    else:
        render(profile, report)
    return 0 if report.ok else 1
