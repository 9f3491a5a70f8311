"""Option aliases shared by commands, and the mapping from flags to profile keys."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

Profile = Annotated[
    Optional[str],
    typer.Argument(help="Built-in profile name (agg, disagg) or path to a YAML profile.", show_default=False),
]
ProfileArg = Annotated[
    str, typer.Argument(help="Built-in profile name (agg, disagg) or path to a YAML profile.")
]
Sets = Annotated[
    Optional[list[str]],
    typer.Option(
        "--set", "-s", help="Override any key: --set router.mode=random (repeatable).", show_default=False
    ),
]
Model = Annotated[
    Optional[str],
    typer.Option(
        "--model",
        "-m",
        help="Model folder or HF id (default: the embedded SmolLM2-135M-Instruct).",
        show_default=False,
    ),
]
Engine = Annotated[
    Optional[str], typer.Option("--engine", "-e", help="Worker engine: mocker or vllm.", show_default=False)
]
Namespace = Annotated[
    Optional[str], typer.Option("--namespace", help="Deployment namespace.", show_default=False)
]
Gpus = Annotated[
    Optional[str],
    typer.Option(
        "--gpus", "--decode-gpus", help="GPUs of the (decode) workers, e.g. 0-3.", show_default=False
    ),
]
PrefillGpus = Annotated[
    Optional[str], typer.Option(help="Disagg: GPUs of the prefill workers, e.g. 0-3.", show_default=False)
]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]

PRECEDENCE_HELP = (
    "Settings come from, lowest to highest: model defaults < profile YAML < environment "
    "(ETCD_ENDPOINTS, NATS_SERVER, DYNAMO__SECTION__KEY=value) < --set a.b=c < explicit flags."
)


def common_flags(model: str | None, engine: str | None, namespace: str | None) -> dict[str, object]:
    return {"model": model, "engine": engine, "namespace": namespace}
