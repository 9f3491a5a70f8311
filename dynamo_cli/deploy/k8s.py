"""The Kubernetes objects of a deployment: what `dynamo deploy k8s` writes and the planner scales.

Every role pod runs `dynamo role ROLE /etc/dynamo/profile.yaml`; the profile comes from a ConfigMap
holding the resolved config with the cluster's etcd and NATS Services filled in, so the pods need no
flags. Names are the config's namespace (DNS-safe) plus the part: dynamo-etcd, dynamo-decode, ...
"""

from __future__ import annotations

import hashlib
import math
import re
from importlib import resources
from typing import Any

import yaml

from dynamo_cli import __version__
from dynamo_cli.config.frontend import ENV_DEFAULT
from dynamo_cli.config.gpus import parse_gpu_list
from dynamo_cli.config.loader import dump_config
from dynamo_cli.config.models import DynamoConfig, Group, WorkerGroupConfig
from dynamo_cli.errors import UsageError
from dynamo_cli.transport.ports import ETCD_PORT, NATS_PORT

DEFAULT_IMAGE = f"dynamo-cli:{__version__}"
ETCD_IMAGE = "quay.io/coreos/etcd:v3.5.17"
NATS_IMAGE = "nats:2.10-alpine"
PROFILE_DIR = "/etc/dynamo"
PROFILE_FILE = "profile.yaml"
PROFILE_PATH = f"{PROFILE_DIR}/{PROFILE_FILE}"
NATS_MONITOR_PORT = 8222
PROFILE_HASH_ANNOTATION = "dynamo/profile-sha256"  # on pod templates: a changed profile rolls the pods
REASON_ANNOTATION = "dynamo/planner-reason"  # on worker Deployments: why the planner last scaled them
DASHBOARD_FILE = "dynamo-cli.json"
# The label Grafana's dashboard sidecar (kube-prometheus-stack, the Grafana Helm chart) looks for.
DASHBOARD_LABEL = "grafana_dashboard"
# A role asked to stop drains for supervisor.stop_timeout_s, then closes within this bound (serve_role);
# the pod's grace period covers both plus a margin for the process to notice SIGTERM.
_CLOSE_S = 5
_GRACE_MARGIN_S = 5
_MAX_PREFIX = 40  # leaves room for "-frontend" and the ReplicaSet/pod suffixes in a 63-character name
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

Obj = dict[str, Any]


def name_prefix(cfg: DynamoConfig) -> str:
    """The config's namespace as the start of a Kubernetes name: lower case, '-' for '_'."""
    prefix = cfg.namespace.lower().replace("_", "-").strip("-")
    if not _DNS_LABEL.match(prefix) or len(prefix) > _MAX_PREFIX:
        raise UsageError(
            f"namespace '{cfg.namespace}' cannot start Kubernetes object names",
            hint=f"use one that starts with a letter and has at most {_MAX_PREFIX} characters, "
            "e.g. --namespace dynamo",
        )
    return prefix


def group_role(cfg: DynamoConfig, group: Group) -> str:
    if group == "prefill_workers":
        return "prefill"
    return "decode" if cfg.disaggregated else "worker"


def worker_groups(cfg: DynamoConfig) -> tuple[Group, ...]:
    """The groups that get a Deployment (prefill even at 0 replicas when disaggregated, to scale up)."""
    return ("workers", "prefill_workers") if cfg.disaggregated else ("workers",)


def deployment_name(cfg: DynamoConfig, group: Group) -> str:
    """The Deployment of a worker group: the manifests and the planner's connector both use this."""
    return f"{name_prefix(cfg)}-{group_role(cfg, group)}"


def service_urls(cfg: DynamoConfig) -> tuple[str, str]:
    """(etcd, NATS) URLs of the deployment's Services, as pods in its Kubernetes namespace reach them."""
    prefix = name_prefix(cfg)
    return f"http://{prefix}-etcd:{ETCD_PORT}", f"nats://{prefix}-nats:{NATS_PORT}"


def deployed_config(cfg: DynamoConfig) -> DynamoConfig:
    """The config the pods read: the cluster's etcd and NATS, the frontend listening on every address,
    the planner scraping the frontend through its Service (what the frontend registers is its pod's
    loopback)."""
    if cfg.frontend.port == 0:
        raise UsageError(
            "frontend.port 0 (pick a free port) cannot be used on Kubernetes",
            hint="give a fixed port, e.g. --set frontend.port=8000",
        )
    if cfg.frontend.ssl_certfile:
        raise UsageError(
            "frontend.ssl_certfile: the frontend's probes and Service speak plain HTTP on Kubernetes",
            hint="terminate TLS at an Ingress or a service mesh, and leave the frontend.ssl_* keys unset",
        )
    etcd, nats = service_urls(cfg)
    frontend_url = cfg.planner.frontend_url or f"http://{name_prefix(cfg)}-frontend:{cfg.frontend.port}"
    return cfg.model_copy(
        update={
            "infra": cfg.infra.model_copy(update={"etcd": etcd, "nats": nats}),
            # API keys come from the Secret, as DYNAMO_API_KEY (api_key_env): never in the ConfigMap.
            "frontend": cfg.frontend.model_copy(update={"host": "0.0.0.0", "api_keys": []}),
            "planner": cfg.planner.model_copy(update={"frontend_url": frontend_url}),
        }
    )


def gpus_per_worker(cfg: DynamoConfig, group: WorkerGroupConfig, key: str) -> int:
    """The GPUs one worker's pod requests: its tensor parallel size (none for the mocker)."""
    if cfg.engine != "vllm":
        return 0
    if group.gpus:
        n, size = len(parse_gpu_list(group.gpus)), group.size
        if size and n % size:
            raise UsageError(
                f"{key}.gpus has {n} GPU(s) for {size} worker(s); they must divide evenly",
                hint=f"set {key}.tensor_parallel_size, or {key}.count to a divisor of {n}",
            )
        return n // size if size else 0
    return group.tensor_parallel_size or cfg.vllm.tensor_parallel_size or 0


def drain_grace_s(cfg: DynamoConfig) -> int:
    """terminationGracePeriodSeconds of role pods: the role's own drain and close bounds, plus a margin."""
    return math.ceil(cfg.supervisor.stop_timeout_s) + _CLOSE_S + _GRACE_MARGIN_S


def manifests(
    cfg: DynamoConfig,
    *,
    image: str = DEFAULT_IMAGE,
    namespace: str = "default",
    etcd_image: str = ETCD_IMAGE,
    nats_image: str = NATS_IMAGE,
    pull_policy: str = "IfNotPresent",
    dashboard: bool = False,
) -> list[Obj]:
    """Every object of the deployment, in apply order. ``namespace`` is the Kubernetes namespace;
    ``dashboard`` adds the Grafana dashboard as a ConfigMap that Grafana's sidecar picks up."""
    if not _DNS_LABEL.match(namespace) or len(namespace) > 63:
        raise UsageError(
            f"'{namespace}' is not a Kubernetes namespace name", hint="use lower-case letters, digits and '-'"
        )
    for what, value in (("image", image), ("etcd image", etcd_image), ("NATS image", nats_image)):
        if not value.strip() or any(c.isspace() for c in value):
            raise UsageError(f"'{value}' is not a container {what}", hint="e.g. --image registry/name:tag")
    b = _Builder(cfg, namespace, image, pull_policy)
    objs = [b.configmap(), *b.etcd(etcd_image), *b.nats(nats_image), *b.planner_rbac()]
    for group in worker_groups(cfg):
        objs.append(b.workers(group))
    if cfg.router.replicas > 0:
        objs.append(b.role_deployment("router", cfg.router.replicas))
    objs += b.frontend()
    objs.append(b.planner())
    if dashboard:
        objs.append(b.dashboard())
    return objs


def dashboard_json() -> str:
    """The Grafana dashboard that ships in the package (dynamo_cli/dashboards/grafana.json)."""
    return (resources.files("dynamo_cli") / "dashboards" / "grafana.json").read_text(encoding="utf-8")


def to_yaml(objs: list[Obj]) -> str:
    """A multi-document YAML stream; the profile in the ConfigMap as a readable block."""
    return yaml.dump_all(objs, Dumper=_Dumper, sort_keys=False)


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


class _Builder:
    def __init__(self, cfg: DynamoConfig, namespace: str, image: str, pull_policy: str):
        self.cfg = cfg
        self.ns = namespace
        self.image = image
        self.pull = pull_policy
        self.prefix = name_prefix(cfg)
        self.profile = dump_config(deployed_config(cfg))
        self.keyed = bool(cfg.frontend.api_keys)  # the frontend and planner read the keys' Secret
        self.profile_hash = hashlib.sha256(self.profile.encode()).hexdigest()

    def labels(self, component: str) -> dict[str, str]:
        return {
            "app.kubernetes.io/name": "dynamo",
            "app.kubernetes.io/instance": self.prefix,
            "app.kubernetes.io/component": component,
        }

    def obj(self, api: str, kind: str, component: str, **fields: Any) -> Obj:
        """An object named after its component (dynamo-frontend), with the deployment's labels."""
        labels = {**self.labels(component), "app.kubernetes.io/managed-by": "dynamo-cli"}
        meta = {"name": f"{self.prefix}-{component}", "namespace": self.ns, "labels": labels}
        return {"apiVersion": api, "kind": kind, "metadata": meta, **fields}

    def deployment(self, component: str, replicas: int, pod: Obj, annotations: Obj | None = None) -> Obj:
        template_meta: Obj = {"labels": self.labels(component)}
        if annotations:
            template_meta["annotations"] = annotations
        selector = {"matchLabels": self.labels(component)}
        spec = {
            "replicas": replicas,
            "selector": selector,
            "template": {"metadata": template_meta, "spec": pod},
        }
        return self.obj("apps/v1", "Deployment", component, spec=spec)

    def service(self, component: str, ports: dict[str, int]) -> Obj:
        service_ports = [{"name": n, "port": p, "targetPort": n} for n, p in ports.items()]
        return self.obj(
            "v1", "Service", component, spec={"selector": self.labels(component), "ports": service_ports}
        )

    def configmap(self) -> Obj:
        return self.obj("v1", "ConfigMap", "profile", data={PROFILE_FILE: self.profile})

    def dashboard(self) -> Obj:
        cm = self.obj("v1", "ConfigMap", "dashboard", data={DASHBOARD_FILE: dashboard_json()})
        cm["metadata"]["labels"][DASHBOARD_LABEL] = "1"
        return cm

    def server(
        self, component: str, image: str, command: list[str], ports: dict[str, int], probe: Obj
    ) -> Obj:
        container = {
            "name": component,
            "image": image,
            "imagePullPolicy": self.pull,
            "command": command,
            "ports": [{"name": n, "containerPort": p} for n, p in ports.items()],
            "readinessProbe": {"httpGet": probe, "periodSeconds": 5},
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        }
        pod = {
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "containers": [container],
            "volumes": [{"name": "data", "emptyDir": {}}],
        }
        deployment = self.deployment(component, 1, pod)
        deployment["spec"]["strategy"] = {"type": "Recreate"}  # one server, never two on one store
        return deployment

    def etcd(self, image: str) -> list[Obj]:
        etcd_url, _ = service_urls(self.cfg)
        listen = f"http://0.0.0.0:{ETCD_PORT}"
        command = ["etcd", "--name=etcd", "--data-dir=/data/etcd", f"--listen-client-urls={listen}"]
        command.append(f"--advertise-client-urls={etcd_url}")
        ports = {"client": ETCD_PORT}
        probe = {"path": "/health", "port": "client"}
        return [self.server("etcd", image, command, ports, probe), self.service("etcd", ports)]

    def nats(self, image: str) -> list[Obj]:
        command = ["nats-server", "-js", "-sd", "/data/jetstream", "-m", str(NATS_MONITOR_PORT)]
        probe = {"path": "/healthz", "port": "monitor"}
        ports = {"client": NATS_PORT, "monitor": NATS_MONITOR_PORT}
        deployment = self.server("nats", image, command, ports, probe)
        return [deployment, self.service("nats", {"client": NATS_PORT})]

    def role_pod(self, role: str, *, gpus: int = 0, account: str | None = None, **container: Any) -> Obj:
        env = [{"name": "CUDA_VISIBLE_DEVICES", "value": ",".join(map(str, range(gpus)))}] if gpus else []
        if self.keyed and role in ("frontend", "planner"):
            env.append(self.api_key_env())
        spec: Obj = {
            "name": role,
            "image": self.image,
            "imagePullPolicy": self.pull,
            "command": ["dynamo", "role", role, PROFILE_PATH],
            **({"env": env} if env else {}),
            **container,
            "volumeMounts": [{"name": "profile", "mountPath": PROFILE_DIR, "readOnly": True}],
        }
        if gpus:
            spec["resources"] = {"requests": {"nvidia.com/gpu": gpus}, "limits": {"nvidia.com/gpu": gpus}}
        pod: Obj = {
            "enableServiceLinks": False,  # no <SERVICE>_PORT variables in the roles' environment
            "terminationGracePeriodSeconds": drain_grace_s(self.cfg),
            "containers": [spec],
            "volumes": [{"name": "profile", "configMap": {"name": f"{self.prefix}-profile"}}],
        }
        if account is None:
            pod["automountServiceAccountToken"] = False
        else:
            pod["serviceAccountName"] = account
        return pod

    def api_key_env(self) -> Obj:
        """DYNAMO_API_KEY from the Secret <prefix>-api-keys (key `keys`, comma-separated), which the user
        creates: keys are never written into the manifests."""
        ref = {"name": f"{self.prefix}-api-keys", "key": "keys"}
        return {"name": ENV_DEFAULT, "valueFrom": {"secretKeyRef": ref}}

    def role_deployment(
        self, role: str, replicas: int, pod: Obj | None = None, annotations: dict[str, str] | None = None
    ) -> Obj:
        pod = pod or self.role_pod(role)
        annotations = {PROFILE_HASH_ANNOTATION: self.profile_hash, **(annotations or {})}
        return self.deployment(role, replicas, pod, annotations)

    def workers(self, group: Group) -> Obj:
        cfg_group: WorkerGroupConfig = getattr(self.cfg, group)
        role = group_role(self.cfg, group)
        pod = self.role_pod(role, gpus=gpus_per_worker(self.cfg, cfg_group, group))
        return self.role_deployment(role, cfg_group.size, pod)

    def frontend(self) -> list[Obj]:
        port = self.cfg.frontend.port
        pod = self.role_pod(
            "frontend",
            ports=[{"name": "http", "containerPort": port}],
            readinessProbe={"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 5},
            livenessProbe={
                "httpGet": {"path": "/live", "port": "http"},
                "initialDelaySeconds": 30,
                "periodSeconds": 10,
                "failureThreshold": 6,
            },
        )
        scrape = {
            f"prometheus.io/{k}": v
            for k, v in (("scrape", "true"), ("port", str(port)), ("path", "/metrics"))
        }
        return [self.role_deployment("frontend", 1, pod, scrape), self.service("frontend", {"http": port})]

    def planner_rbac(self) -> list[Obj]:
        name = f"{self.prefix}-planner"
        scaled = [deployment_name(self.cfg, g) for g in worker_groups(self.cfg)]
        scale = {"resources": ["deployments", "deployments/scale"], "resourceNames": scaled}
        rules = [
            {"apiGroups": ["apps"], **scale, "verbs": ["get", "patch", "update"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
        ]
        rbac = "rbac.authorization.k8s.io"
        subject = {"kind": "ServiceAccount", "name": name, "namespace": self.ns}
        return [
            self.obj("v1", "ServiceAccount", "planner"),
            self.obj(f"{rbac}/v1", "Role", "planner", rules=rules),
            self.obj(
                f"{rbac}/v1",
                "RoleBinding",
                "planner",
                roleRef={"apiGroup": rbac, "kind": "Role", "name": name},
                subjects=[subject],
            ),
        ]

    def planner(self) -> Obj:
        return self.role_deployment("planner", 1, self.role_pod("planner", account=f"{self.prefix}-planner"))
