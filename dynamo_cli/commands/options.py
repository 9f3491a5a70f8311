"""The options commands share, and the one map from flags to profile keys.

Each flag that sets a profile key is declared here once, as an ``Annotated`` alias, and its key is in
``PROFILE_KEYS``; a command lists the aliases it takes and passes their values to ``profile_flags``.
Help texts name the key they set; a default they quote is checked against the config models by
tests/unit/test_cli.py.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

_PROFILE_HELP = "Built-in profile name (agg, disagg) or path to a YAML profile."

# Parameter name -> the profile key it sets: the one flag-to-key map of run, doctor, deploy, config
# show and role.
PROFILE_KEYS = {
    "model": "model",
    "engine": "engine",
    "namespace": "namespace",
    "served_model_name": "served_model_name",
    "host": "frontend.host",
    "listen": "infra.listen",
    "port": "frontend.port",
    "workers": "workers.count",
    "decode_workers": "workers.count",
    "gpus": "workers.gpus",
    "decode_tp": "workers.tensor_parallel_size",
    "prefill_workers": "prefill_workers.count",
    "prefill_gpus": "prefill_workers.gpus",
    "prefill_tp": "prefill_workers.tensor_parallel_size",
    "router_mode": "router.mode",
    "speedup": "mocker.speedup_ratio",
    "remote_prefill": "disagg.remote_prefill",
    "planner": "planner.enabled",
    "tool_call_parser": "frontend.tool_call_parser",
    "reasoning_parser": "frontend.reasoning_parser",
    "api_keys": "frontend.api_keys",
    "ssl_certfile": "frontend.ssl_certfile",
    "ssl_keyfile": "frontend.ssl_keyfile",
    "ssl_ca_certs": "frontend.ssl_ca_certs",
}


def profile_flags(**given: Any) -> dict[str, Any]:
    """Flag values by parameter name -> profile keys (None: not given; a later flag for the same key
    wins over an earlier one when both are given)."""
    out: dict[str, Any] = {}
    for name, value in given.items():
        if value is not None or PROFILE_KEYS[name] not in out:
            out[PROFILE_KEYS[name]] = value
    return out


def _opt(*names: str, help: str) -> Any:
    """A flag that sets a profile key: None when not given, so the profile's value stands."""
    return typer.Option(*names, help=help, show_default=False)


Profile = Annotated[Optional[str], typer.Argument(help=_PROFILE_HELP, show_default=False)]
ProfileArg = Annotated[str, typer.Argument(help=_PROFILE_HELP)]
Sets = Annotated[
    Optional[list[str]],
    typer.Option(
        "--set", "-s", help="Override any key: --set router.mode=random (repeatable).", show_default=False
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]

Model = Annotated[
    Optional[str],
    _opt("--model", "-m", help="Model folder or HF id (default: the embedded SmolLM2-135M-Instruct)."),
]
Engine = Annotated[Optional[str], _opt("--engine", "-e", help="Worker engine: mocker or vllm (engine).")]
Namespace = Annotated[Optional[str], _opt("--namespace", help="Deployment namespace (namespace).")]
ServedModelName = Annotated[
    Optional[str], _opt("--served-model-name", help="Name clients use for the model.")
]
Host = Annotated[
    Optional[str], _opt("--host", help="Frontend bind address (frontend.host; default: 127.0.0.1).")
]
Listen = Annotated[
    Optional[str],
    _opt(
        "--listen",
        help="Spawn etcd and NATS on this address, behind generated credentials, so that other machines "
        "can join; prints the command they run (infra.listen; default: 127.0.0.1).",
    ),
]
Join = Annotated[
    Optional[str],
    typer.Option(
        help="The deployment to join, by the URL `dynamo run --listen` printed: its etcd and NATS with "
        "their credentials, and its config (--set and the flags apply on top).",
        show_default=False,
    ),
]
Port = Annotated[Optional[int], _opt("--port", "-p", help="Frontend port (frontend.port; default: 8000).")]
Workers = Annotated[
    Optional[int], _opt("--workers", "-w", help="Worker processes; the decode workers when disaggregated.")
]
DecodeWorkers = Annotated[
    Optional[int], _opt("--decode-workers", help="Disagg: decode worker processes (= --workers).")
]
Gpus = Annotated[
    Optional[str],
    _opt(
        "--gpus",
        "--decode-gpus",
        help="GPUs of the (decode) workers, e.g. 0-3 (split evenly; a worker's share is its TP size).",
    ),
]
DecodeTp = Annotated[
    Optional[int],
    _opt("--decode-tp", help="Disagg: tensor parallel per decode worker (splits --decode-gpus)."),
]
PrefillWorkers = Annotated[Optional[int], _opt("--prefill-workers", help="Disagg: prefill worker processes.")]
PrefillGpus = Annotated[
    Optional[str], _opt("--prefill-gpus", help="Disagg: GPUs of the prefill workers, e.g. 0-3.")
]
PrefillTp = Annotated[
    Optional[int],
    _opt("--prefill-tp", help="Disagg: tensor parallel per prefill worker (splits --prefill-gpus)."),
]
RouterMode = Annotated[
    Optional[str], _opt("--router-mode", help="kv, round-robin, random or least-loaded (router.mode).")
]
Speedup = Annotated[Optional[float], _opt("--speedup", help="Mocker speedup ratio (mocker.speedup_ratio).")]
RemotePrefill = Annotated[
    Optional[bool],
    _opt(
        "--remote-prefill/--no-remote-prefill",
        help="Disagg: send long prompts to prefill workers (disagg.remote_prefill).",
    ),
]
Planner = Annotated[
    Optional[bool],
    _opt(
        "--planner/--no-planner",
        help="Scale the worker groups with the planner within planner.workers / planner.prefill_workers "
        "bounds (planner.enabled).",
    ),
]
ToolCallParser = Annotated[
    Optional[str],
    _opt(
        "--tool-call-parser",
        help="How model text becomes tool_calls: auto, hermes, llama3_json, mistral, pythonic or "
        "qwen3_coder (frontend.tool_call_parser; auto picks from the chat template).",
    ),
]
ReasoningParser = Annotated[
    Optional[str],
    _opt(
        "--reasoning-parser",
        help="Split <think> reasoning into reasoning_content: deepseek_r1 or qwen3 "
        "(frontend.reasoning_parser; default off).",
    ),
]

ApiKey = Annotated[
    Optional[list[str]],
    typer.Option(
        "--api-key",
        help="A key clients must send as 'Authorization: Bearer KEY' (repeatable; with --api-key-file it "
        "replaces frontend.api_keys). Warned: it shows in `ps` and shell history; prefer $DYNAMO_API_KEY "
        "or --api-key-file.",
        metavar="KEY",
        show_default=False,
    ),
]
ApiKeyFile = Annotated[
    Optional[list[str]],
    typer.Option(
        "--api-key-file",
        help="A file of API keys, one a line (repeatable; frontend.api_keys: [file:PATH]).",
        metavar="PATH",
        show_default=False,
    ),
]
SslCertfile = Annotated[
    Optional[str],
    _opt("--ssl-certfile", help="Serve https with this certificate, PEM (frontend.ssl_certfile)."),
]
SslKeyfile = Annotated[
    Optional[str], _opt("--ssl-keyfile", help="The certificate's private key, PEM (frontend.ssl_keyfile).")
]
SslCaCerts = Annotated[
    Optional[str],
    _opt(
        "--ssl-ca-certs",
        help="Mutual TLS: clients must present a certificate from this CA bundle (frontend.ssl_ca_certs).",
    ),
]


def api_key_entries(keys: list[str] | None, files: list[str] | None) -> list[str] | None:
    """--api-key and --api-key-file as frontend.api_keys entries (None: neither given)."""
    entries = [*(keys or []), *(f"file:{f}" for f in files or [])]
    return entries or None


PRECEDENCE_HELP = (
    "Settings come from, lowest to highest: model defaults < profile YAML < environment "
    "(ETCD_ENDPOINTS, NATS_SERVER, DYNAMO__SECTION__KEY=value) < --set a.b=c < explicit flags."
)
