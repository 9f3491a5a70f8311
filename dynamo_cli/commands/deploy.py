"""`dynamo deploy k8s PROFILE`: the deployment as Kubernetes manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dynamo_cli.commands import options as o

app = typer.Typer(help="Write a deployment for a cluster instead of running it here.", no_args_is_help=True)

HELP = f"""Write the Kubernetes objects of a deployment as YAML: a ConfigMap with the resolved profile, etcd
and NATS (JetStream) with their Services, the workers, the router, the frontend with its Service,
and the planner with a service account allowed to scale the worker Deployments.

Examples:

  dynamo deploy k8s agg --engine mocker | kubectl apply -f -

  dynamo deploy k8s agg --model Qwen/Qwen3-0.6B --gpus 0-3 --image registry.example.com/dynamo-cli:0.1.0

  dynamo deploy k8s disagg --prefill-workers 2 --workers 2 --k8s-namespace llm -o deploy/   # a file each

  dynamo deploy k8s ./my-profile.yaml --set router.replicas=2 -o dynamo.yaml

Every pod runs `dynamo role ROLE /etc/dynamo/profile.yaml`, so the image needs dynamo-cli (and vLLM
for --engine vllm). The profile's infra.etcd and infra.nats are replaced by the cluster's Services
and the frontend listens on 0.0.0.0. GPU lists give each worker pod its share as nvidia.com/gpu
(which GPUs is Kubernetes' choice); a model folder must exist inside the image. Scale-down drains: the
worker pods' grace period outlasts supervisor.stop_timeout_s. --dashboard adds the Grafana dashboard
(frontend, router, workers' KV use, disaggregation, planner) as a ConfigMap labelled
grafana_dashboard: "1", which Grafana's dashboard sidecar loads. Prometheus finds the frontend's
/metrics through its pods' prometheus.io annotations; the router and worker panels fill when the
router runs in the frontend (--set router.replicas=0). The series: docs/metrics.md.

With frontend.api_keys set, the frontend and planner read DYNAMO_API_KEY from the Secret
PREFIX-api-keys, key `keys` (comma-separated), which you create; keys are never written into the
manifests. TLS terminates at an Ingress or a mesh: the frontend.ssl_* keys are refused here.

{o.PRECEDENCE_HELP}
"""


@app.command("k8s", help=HELP)
def k8s(
    profile: o.ProfileArg,
    sets: o.Sets = None,
    model: o.Model = None,
    engine: o.Engine = None,
    namespace: o.Namespace = None,
    workers: o.Workers = None,
    gpus: o.Gpus = None,
    prefill_workers: o.PrefillWorkers = None,
    prefill_gpus: o.PrefillGpus = None,
    image: Annotated[
        Optional[str],
        typer.Option(help="Image of the role pods (default: dynamo-cli:VERSION).", show_default=False),
    ] = None,
    k8s_namespace: Annotated[
        str, typer.Option("--k8s-namespace", help="Kubernetes namespace of every object.")
    ] = "default",
    etcd_image: Annotated[Optional[str], typer.Option(help="etcd image.", show_default=False)] = None,
    nats_image: Annotated[Optional[str], typer.Option(help="NATS image.", show_default=False)] = None,
    dashboard: Annotated[
        bool, typer.Option("--dashboard", help="Add the Grafana dashboard as a ConfigMap.")
    ] = False,
    output: Annotated[
        str,
        typer.Option(
            "--output", "-o", help="'-' (stdout), a FILE, or a DIR (one file per object, ends in /)."
        ),
    ] = "-",
) -> None:
    from dynamo_cli.config.loader import load_config
    from dynamo_cli.deploy import k8s as kube

    flags = o.profile_flags(
        model=model, engine=engine, namespace=namespace, workers=workers, gpus=gpus,
        prefill_workers=prefill_workers, prefill_gpus=prefill_gpus,
    )  # fmt: skip
    cfg = load_config(profile, sets=sets, flags=flags)
    objs = kube.manifests(
        cfg,
        image=image or kube.DEFAULT_IMAGE,
        namespace=k8s_namespace,
        etcd_image=etcd_image or kube.ETCD_IMAGE,
        nats_image=nats_image or kube.NATS_IMAGE,
        dashboard=dashboard,
    )
    if output == "-":
        typer.echo(kube.to_yaml(objs), nl=False)
        return
    _write(objs, Path(output), as_dir=output.endswith("/"))


def _write(objs: list[dict[str, object]], path: Path, *, as_dir: bool) -> None:
    from dynamo_cli.console import err_console
    from dynamo_cli.deploy.k8s import to_yaml
    from dynamo_cli.errors import UsageError

    try:
        if as_dir or path.is_dir():
            path.mkdir(parents=True, exist_ok=True)
            for i, obj in enumerate(objs):
                meta = obj["metadata"]
                assert isinstance(meta, dict)
                name = f"{i:02d}-{str(obj['kind']).lower()}-{meta['name']}.yaml"
                (path / name).write_text(to_yaml([obj]))
        else:
            path.write_text(to_yaml(objs))
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror}", hint="check the --output path") from e
    err_console().print(f"wrote {len(objs)} Kubernetes objects to {path}")
