"""`dynamo run PROFILE`: the whole deployment on this machine."""

from __future__ import annotations

from dynamo_cli.commands import options as o

HELP = f"""Bring up a whole deployment: etcd and NATS (spawned if none answer), workers, router, frontend.

Examples:

  dynamo run agg                                 # vLLM with the embedded SmolLM2-135M-Instruct

  dynamo run agg --model Qwen/Qwen3-0.6B --gpus 0-1   # any vLLM model; 2 GPUs = tensor parallel 2

  dynamo run agg --engine mocker                 # simulated engine, no GPU needed

  dynamo run agg --engine mocker --workers 4 --port 8080

  dynamo run agg --set router.mode=random --set mocker.speedup_ratio=10

  dynamo run disagg --prefill-gpus 0-3 --decode-gpus 4-5   # 1 prefill worker (TP 4), 1 decode (TP 2)

  dynamo run disagg --prefill-workers 2 --decode-workers 2 --engine mocker

  dynamo run agg --engine mocker --planner --set planner.workers.max=4   # add/remove workers with load

  dynamo run agg --host 0.0.0.0 --api-key-file keys.txt --ssl-certfile cert.pem --ssl-keyfile key.pem

  dynamo run ./my-profile.yaml

{o.PRECEDENCE_HELP}
"""


def run(
    profile: o.ProfileArg,
    sets: o.Sets = None,
    model: o.Model = None,
    engine: o.Engine = None,
    namespace: o.Namespace = None,
    served_model_name: o.ServedModelName = None,
    host: o.Host = None,
    port: o.Port = None,
    listen: o.Listen = None,
    workers: o.Workers = None,
    router_mode: o.RouterMode = None,
    speedup: o.Speedup = None,
    gpus: o.Gpus = None,
    prefill_workers: o.PrefillWorkers = None,
    decode_workers: o.DecodeWorkers = None,
    prefill_gpus: o.PrefillGpus = None,
    prefill_tp: o.PrefillTp = None,
    decode_tp: o.DecodeTp = None,
    remote_prefill: o.RemotePrefill = None,
    planner: o.Planner = None,
    tool_call_parser: o.ToolCallParser = None,
    reasoning_parser: o.ReasoningParser = None,
    api_key: o.ApiKey = None,
    api_key_file: o.ApiKeyFile = None,
    ssl_certfile: o.SslCertfile = None,
    ssl_keyfile: o.SslKeyfile = None,
    ssl_ca_certs: o.SslCaCerts = None,
    json_output: o.Json = False,
) -> int:
    from dynamo_cli.config.loader import load_config
    from dynamo_cli.console import Sink
    from dynamo_cli.deployment.launcher import run_deployment
    from dynamo_cli.lifecycle import configure_logging

    flags = o.profile_flags(
        model=model, engine=engine, namespace=namespace, served_model_name=served_model_name, host=host,
        port=port, listen=listen, workers=workers, decode_workers=decode_workers, router_mode=router_mode,
        speedup=speedup, gpus=gpus, prefill_workers=prefill_workers, prefill_gpus=prefill_gpus,
        prefill_tp=prefill_tp, decode_tp=decode_tp, remote_prefill=remote_prefill, planner=planner,
        tool_call_parser=tool_call_parser, reasoning_parser=reasoning_parser,
        api_keys=o.api_key_entries(api_key, api_key_file), ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
        ssl_ca_certs=ssl_ca_certs,
    )  # fmt: skip
    cfg = load_config(profile, sets=sets, flags=flags)
    configure_logging(cfg.log_level)
    return run_deployment(cfg, Sink(json_output=json_output))
