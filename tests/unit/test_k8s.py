"""`dynamo deploy k8s` and the planner's Kubernetes connector, with no cluster: every manifest is checked
against the Kubernetes JSON schemas (strict: an unknown field fails), and the connector's HTTP calls
against a recorded exchange with an API server."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from dynamo_cli.app import main
from dynamo_cli.config.loader import load_config
from dynamo_cli.config.models import DynamoConfig
from dynamo_cli.deploy import k8s
from dynamo_cli.errors import StartupError, UsageError
from dynamo_cli.planner.connector import Connector
from dynamo_cli.planner.kubernetes import ClusterAccess, KubernetesConnector, KubernetesError

DATA = Path(__file__).parent / "data"
K8S_VERSIONS = ("1.30.0", "1.37.0")  # an old supported cluster and the newest schemas the package has
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DYNAMO") or name in ("ETCD_ENDPOINTS", "NATS_SERVER"):
            monkeypatch.delenv(name)


def cfg_of(profile: str, *sets: str, **flags: Any) -> DynamoConfig:
    return load_config(profile, sets=list(sets), flags=flags, environ={})


def by_kind(objs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


PROFILES = {
    "agg-mocker": lambda: cfg_of("agg", engine="mocker"),
    "agg-vllm-gpus": lambda: cfg_of("agg", "workers.gpus=0-3"),
    "disagg-router": lambda: cfg_of(
        "disagg", "router.replicas=2", "workers.count=2", "prefill_workers.count=3"
    ),
}


# ---- manifests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_object_validates_against_the_kubernetes_schema(profile: str, version: str) -> None:
    objs = k8s.manifests(PROFILES[profile](), namespace="llm", image="registry.example.com/dynamo-cli:0.1.0")
    for obj in objs:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {e.message} at {list(e.path)}")
        assert obj["metadata"]["namespace"] == "llm"
        assert DNS_LABEL.match(obj["metadata"]["name"]), obj["metadata"]["name"]


def test_the_schema_check_catches_an_unknown_field() -> None:
    deployment = by_kind(k8s.manifests(cfg_of("agg", engine="mocker")), "Deployment")["dynamo-worker"]
    deployment["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


def test_agg_mocker_deploys_workers_router_frontend_planner_and_no_gpus() -> None:
    cfg = cfg_of("agg", engine="mocker")
    objs = k8s.manifests(cfg, image="img:1")
    deployments = by_kind(objs, "Deployment")
    replicas = {name: d["spec"]["replicas"] for name, d in deployments.items()}
    assert replicas == {
        "dynamo-etcd": 1,
        "dynamo-nats": 1,
        "dynamo-worker": 2,  # the agg profile's workers.count
        "dynamo-router": 1,
        "dynamo-frontend": 1,
        "dynamo-planner": 1,
    }
    for role in ("worker", "router", "frontend", "planner"):
        c = container(deployments[f"dynamo-{role}"])
        assert c["command"] == ["dynamo", "role", role, k8s.PROFILE_PATH]
        assert c["image"] == "img:1"
        assert "resources" not in c and "env" not in c
    assert set(by_kind(objs, "Service")) == {"dynamo-etcd", "dynamo-nats", "dynamo-frontend"}
    assert "-js" in container(deployments["dynamo-nats"])["command"]
    assert container(deployments["dynamo-etcd"])["image"] == k8s.ETCD_IMAGE


def test_configmap_profile_loads_back_and_points_at_the_services(tmp_path: Path) -> None:
    cfg = cfg_of("disagg", "router.mode=random", namespace="team_a")
    objs = k8s.manifests(cfg)
    (cm,) = by_kind(objs, "ConfigMap").values()
    path = tmp_path / k8s.PROFILE_FILE
    path.write_text(cm["data"][k8s.PROFILE_FILE])
    loaded = load_config(str(path), environ={})
    assert loaded.infra.etcd == "http://team-a-etcd:2379"
    assert loaded.infra.nats == "nats://team-a-nats:4222"
    assert loaded.frontend.host == "0.0.0.0"
    assert loaded.namespace == "team_a"  # the discovery namespace is the profile's, unchanged
    assert loaded.planner.frontend_url == "http://team-a-frontend:8000"  # the Service, not a pod's loopback
    changed = {"infra", "frontend", "planner"}
    assert loaded.model_dump(exclude=changed) == cfg.model_dump(exclude=changed)
    services = by_kind(objs, "Service")
    assert services["team-a-etcd"]["spec"]["ports"][0]["port"] == 2379
    assert services["team-a-nats"]["spec"]["ports"][0]["port"] == 4222
    # every role pod mounts that ConfigMap where its command reads the profile
    for d in by_kind(objs, "Deployment").values():
        c, pod = container(d), d["spec"]["template"]["spec"]
        if c["command"][:2] != ["dynamo", "role"]:
            continue
        (volume,) = pod["volumes"]
        assert volume["configMap"]["name"] == cm["metadata"]["name"]
        (mount,) = c["volumeMounts"]
        assert (
            mount["name"] == volume["name"] and f"{mount['mountPath']}/{k8s.PROFILE_FILE}" == c["command"][3]
        )


def test_profile_change_changes_the_pod_template() -> None:
    def template_hash(cfg: DynamoConfig) -> str:
        worker = by_kind(k8s.manifests(cfg), "Deployment")["dynamo-worker"]
        return worker["spec"]["template"]["metadata"]["annotations"][k8s.PROFILE_HASH_ANNOTATION]

    assert template_hash(cfg_of("agg")) != template_hash(cfg_of("agg", "router.mode=random"))


@pytest.mark.parametrize(
    ("sets", "pods", "gpus"),
    [
        (["workers.gpus=0-3"], 2, 2),  # agg has 2 workers: 2 GPUs each
        (["workers.gpus=0-3", "workers.tensor_parallel_size=1"], 4, 1),
        (["workers.gpus=0-3", "workers.count=1"], 1, 4),
        (["workers.tensor_parallel_size=8"], 2, 8),  # no list: TP is the GPUs per worker
    ],
)
def test_vllm_workers_request_their_tensor_parallel_gpus(sets: list[str], pods: int, gpus: int) -> None:
    worker = by_kind(k8s.manifests(cfg_of("agg", *sets)), "Deployment")["dynamo-worker"]
    assert worker["spec"]["replicas"] == pods
    c = container(worker)
    assert c["resources"] == {"requests": {"nvidia.com/gpu": gpus}, "limits": {"nvidia.com/gpu": gpus}}
    # inside the pod its GPUs are numbered from 0; the vLLM engine sizes tensor parallel from this
    assert c["env"] == [{"name": "CUDA_VISIBLE_DEVICES", "value": ",".join(map(str, range(gpus)))}]


def test_no_gpu_request_for_the_mocker_or_without_gpus() -> None:
    for cfg in (cfg_of("agg", "workers.gpus=0-3", engine="mocker"), cfg_of("agg")):
        worker = by_kind(k8s.manifests(cfg), "Deployment")["dynamo-worker"]
        assert "resources" not in container(worker)


def test_disagg_deploys_decode_and_prefill_groups_and_the_router() -> None:
    cfg = PROFILES["disagg-router"]()
    deployments = by_kind(k8s.manifests(cfg), "Deployment")
    assert "dynamo-worker" not in deployments
    assert deployments["dynamo-decode"]["spec"]["replicas"] == 2
    assert deployments["dynamo-prefill"]["spec"]["replicas"] == 3
    assert deployments["dynamo-router"]["spec"]["replicas"] == 2
    assert container(deployments["dynamo-decode"])["command"][2] == "decode"
    assert container(deployments["dynamo-prefill"])["command"][2] == "prefill"
    assert k8s.deployment_name(cfg, "workers") == "dynamo-decode"
    assert k8s.deployment_name(cfg, "prefill_workers") == "dynamo-prefill"


def test_router_replicas_zero_means_no_router_and_prefill_zero_is_still_scalable() -> None:
    cfg = cfg_of("disagg", "router.replicas=0", "prefill_workers.count=0")
    deployments = by_kind(k8s.manifests(cfg), "Deployment")
    assert "dynamo-router" not in deployments
    assert deployments["dynamo-prefill"]["spec"]["replicas"] == 0  # the planner can scale it up
    assert "dynamo-prefill" not in by_kind(k8s.manifests(cfg_of("agg")), "Deployment")


def test_labels_select_exactly_their_component() -> None:
    objs = k8s.manifests(PROFILES["disagg-router"]())
    for obj in objs:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "dynamo"
        assert labels["app.kubernetes.io/instance"] == "dynamo"
    components = []
    for d in by_kind(objs, "Deployment").values():
        selector = d["spec"]["selector"]["matchLabels"]
        assert selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        components.append(selector["app.kubernetes.io/component"])
    assert len(components) == len(set(components))  # no Deployment's selector takes another's pods
    for s in by_kind(objs, "Service").values():
        assert (
            s["spec"]["selector"]["app.kubernetes.io/component"]
            == s["metadata"]["labels"]["app.kubernetes.io/component"]
        )


def test_frontend_listens_on_its_port_with_health_probe_and_scrape_annotations() -> None:
    objs = k8s.manifests(cfg_of("agg", "frontend.port=9000", "frontend.host=127.0.0.1"))
    frontend = by_kind(objs, "Deployment")["dynamo-frontend"]
    c = container(frontend)
    assert c["ports"] == [{"name": "http", "containerPort": 9000}]
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/live", "port": "http"}
    annotations = frontend["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9000"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert by_kind(objs, "Service")["dynamo-frontend"]["spec"]["ports"] == [
        {"name": "http", "port": 9000, "targetPort": "http"}
    ]


def test_planner_may_scale_exactly_the_worker_deployments() -> None:
    cfg = PROFILES["disagg-router"]()
    objs = k8s.manifests(cfg, namespace="llm")
    (role,) = by_kind(objs, "Role").values()
    (binding,) = by_kind(objs, "RoleBinding").values()
    (account,) = by_kind(objs, "ServiceAccount").values()
    apps = [r for r in role["rules"] if r["apiGroups"] == ["apps"]]
    assert len(apps) == 1
    assert {"deployments", "deployments/scale"} <= set(apps[0]["resources"])
    assert {"get", "patch"} <= set(apps[0]["verbs"])
    assert sorted(apps[0]["resourceNames"]) == sorted(
        k8s.deployment_name(cfg, g) for g in ("workers", "prefill_workers")
    )
    assert {"get", "list"} <= set(next(r for r in role["rules"] if r["apiGroups"] == [""])["verbs"])
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "llm"}
    ]
    deployments = by_kind(objs, "Deployment")
    planner = deployments["dynamo-planner"]
    assert planner["spec"]["replicas"] == 1
    assert container(planner)["command"] == ["dynamo", "role", "planner", k8s.PROFILE_PATH]
    assert planner["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
    # no other pod gets an API token
    for name, d in deployments.items():
        if name != "dynamo-planner":
            assert d["spec"]["template"]["spec"]["automountServiceAccountToken"] is False, name


def test_worker_pods_get_time_to_drain() -> None:
    for stop in (20, 100):
        cfg = cfg_of("agg", f"supervisor.stop_timeout_s={stop}")
        pod = by_kind(k8s.manifests(cfg), "Deployment")["dynamo-worker"]["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] >= stop + 5  # drain bound + close bound


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_dashboard_configmap_holds_the_dashboard_for_grafanas_sidecar(version: str) -> None:
    cfg = cfg_of("agg", "router.replicas=0", engine="mocker", namespace="team_a")
    assert "team-a-dashboard" not in by_kind(k8s.manifests(cfg), "ConfigMap")  # only when asked
    objs = k8s.manifests(cfg, namespace="monitoring", dashboard=True)
    cm = by_kind(objs, "ConfigMap")["team-a-dashboard"]
    kubernetes_validate.validate(cm, version, strict=True)
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["labels"]["app.kubernetes.io/instance"] == "team-a"
    (text,) = cm["data"].values()
    assert json.loads(text) == json.loads(k8s.dashboard_json())
    assert json.loads(text)["title"] and json.loads(text)["panels"]
    # through the YAML the command writes, the JSON comes back byte for byte
    back = list(yaml.safe_load_all(k8s.to_yaml(objs)))
    assert back == objs
    assert len(text.encode()) < 1024 * 1024  # a ConfigMap's limit


def test_cli_dashboard_flag_adds_the_configmap(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["deploy", "k8s", "agg", "--engine", "mocker", "--dashboard"], capsys)
    assert code == 0, err
    docs = list(yaml.safe_load_all(out))
    assert docs == k8s.manifests(cfg_of("agg", engine="mocker"), dashboard=True)
    assert by_kind(docs, "ConfigMap")["dynamo-dashboard"]["metadata"]["labels"]["grafana_dashboard"] == "1"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_api_keys_come_from_a_secret_and_never_into_the_manifests(version: str) -> None:
    cfg = cfg_of("agg", "frontend.api_keys=[sk-never-written, env:MINE]", "planner.enabled=true")
    objs = k8s.manifests(cfg)
    assert "sk-never-written" not in k8s.to_yaml(objs) and "env:MINE" not in k8s.to_yaml(objs)
    deployments = by_kind(objs, "Deployment")
    for role in ("frontend", "planner"):
        (container,) = deployments[f"dynamo-{role}"]["spec"]["template"]["spec"]["containers"]
        (env,) = [e for e in container["env"] if e["name"] == "DYNAMO_API_KEY"]
        assert env["valueFrom"]["secretKeyRef"] == {"name": "dynamo-api-keys", "key": "keys"}
        kubernetes_validate.validate(deployments[f"dynamo-{role}"], version, strict=True)
    (worker,) = deployments["dynamo-worker"]["spec"]["template"]["spec"]["containers"]
    assert "env" not in worker
    assert "DYNAMO_API_KEY" not in k8s.to_yaml(k8s.manifests(cfg_of("agg")))


@pytest.mark.parametrize(
    ("cfg", "kwargs", "words"),
    [
        (lambda: cfg_of("agg", "frontend.port=0"), {}, "frontend.port 0"),
        (lambda: cfg_of("agg", "frontend.ssl_certfile=/c.pem"), {}, "speak plain HTTP on Kubernetes"),
        (lambda: cfg_of("agg", namespace="9lives"), {}, "namespace '9lives'"),
        (lambda: cfg_of("agg", namespace="x" * 41), {}, "cannot start Kubernetes object names"),
        (lambda: cfg_of("agg"), {"namespace": "Team_A"}, "not a Kubernetes namespace"),
        (lambda: cfg_of("agg"), {"image": "my image"}, "not a container image"),
        (lambda: cfg_of("agg", "workers.gpus=0-2"), {}, "3 GPU(s) for 2 worker(s)"),
    ],
)
def test_what_cannot_be_deployed_is_a_usage_error(cfg: Any, kwargs: dict[str, str], words: str) -> None:
    with pytest.raises(UsageError) as e:
        k8s.manifests(cfg(), **kwargs)
    assert words in e.value.message
    assert e.value.hint


# ---- the connector against a recorded API server ----------------------------------------------------


class RecordedApiServer:
    """Answers exactly the recorded requests, in order; anything else fails the test."""

    def __init__(self, exchange: list[dict[str, Any]]):
        self.pending = list(exchange)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert self.pending, f"unexpected request {request.method} {request.url.path}"
        want, answer = self.pending[0]["request"], self.pending[0]["response"]
        got = f"{request.method} {request.url.path}"
        assert got == f"{want['method']} {want['path']}", (
            f"expected {want['method']} {want['path']}, got {got}"
        )
        assert not request.url.query, f"unexpected query {request.url.query!r}"
        for header, value in want["headers"].items():
            assert request.headers.get(header) == value, f"{got}: header {header}"
        body = json.loads(request.content) if request.content else None
        assert body == want["body"], f"{got}: body"
        self.pending.pop(0)
        return httpx.Response(answer["status"], json=answer["body"])


def recording() -> dict[str, Any]:
    return json.loads((DATA / "k8s_scale_exchange.json").read_text())


def connector(cfg: DynamoConfig, server: Any, rec: dict[str, Any] | None = None) -> KubernetesConnector:
    rec = rec or recording()
    access = ClusterAccess(rec["server"], rec["namespace"], lambda: rec["token"])
    return KubernetesConnector(cfg, access, transport=httpx.MockTransport(server))


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    """A Kubernetes Status object, as the API server sends with an error."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


async def test_connector_makes_exactly_the_recorded_calls() -> None:
    rec = recording()
    server = RecordedApiServer(rec["exchange"])
    conn: Connector = connector(cfg_of("disagg"), server, rec)
    assert await conn.replicas() == {"workers": 2, "prefill_workers": 1}
    await conn.scale("prefill_workers", 3, "prefill queue 7 > 2 for 60 s")
    await conn.scale("workers", 1, "decode KV utilisation 0.12 < 0.3 for 120 s")
    assert server.pending == []
    assert isinstance(conn, KubernetesConnector)
    await conn.aclose()


async def test_recorded_server_fails_on_an_unrecorded_call() -> None:
    rec = recording()
    async with connector(cfg_of("disagg"), RecordedApiServer(rec["exchange"]), rec) as conn:
        with pytest.raises(AssertionError, match="expected GET"):
            await conn.scale("workers", 5, "x")


async def test_a_missing_deployment_is_left_out() -> None:
    def server(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/dynamo-prefill/scale"):
            return httpx.Response(
                404, json=status(404, "NotFound", 'deployments.apps "dynamo-prefill" not found')
            )
        return httpx.Response(200, json={"kind": "Scale", "spec": {"replicas": 4}, "status": {"replicas": 4}})

    async with connector(cfg_of("disagg"), server) as conn:
        assert await conn.replicas() == {"workers": 4}


async def test_agg_has_only_the_workers_group() -> None:
    calls: list[str] = []

    def server(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(200, json={"kind": "Scale", "spec": {"replicas": 2}})

    async with connector(cfg_of("agg"), server) as conn:
        assert await conn.replicas() == {"workers": 2}
        with pytest.raises(KubernetesError, match="no prefill_workers Deployment"):
            await conn.scale("prefill_workers", 1, "x")
    assert calls == ["/apis/apps/v1/namespaces/llm/deployments/dynamo-worker/scale"]


@pytest.mark.parametrize(
    ("code", "reason", "hint_words"),
    [
        (403, "Forbidden", "Role must allow"),
        (401, "Unauthorized", "token"),
        (409, "Conflict", "retries"),
        (503, "ServiceUnavailable", "retries"),
    ],
)
async def test_api_errors_carry_the_servers_message(code: int, reason: str, hint_words: str) -> None:
    message = f'deployments.apps "dynamo-decode" is {reason.lower()}: the test said so'

    def server(request: httpx.Request) -> httpx.Response:
        return httpx.Response(code, json=status(code, reason, message))

    async with connector(cfg_of("disagg"), server) as conn:
        with pytest.raises(KubernetesError) as e:
            await conn.scale("workers", 2, "x")
    assert e.value.status == code
    assert message in e.value.message and "PATCH" in e.value.message
    assert e.value.hint and hint_words in e.value.hint
    assert e.value.exit_code == 1


async def test_no_answer_is_a_clear_error() -> None:
    def server(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("timed out", request=request)

    async with connector(cfg_of("agg"), server) as conn:
        with pytest.raises(KubernetesError, match="did not answer"):
            await conn.replicas()


def test_in_cluster_access_reads_the_service_account(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("tok-1\n")
    (tmp_path / "namespace").write_text("llm")
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    access = ClusterAccess.in_cluster(env, tmp_path)
    assert (access.server, access.namespace, access.token(), access.ca_file) == (
        "https://10.96.0.1:443",
        "llm",
        "tok-1",
        None,
    )
    (tmp_path / "token").write_text("tok-2")  # the kubelet rotated it: the next call uses the new one
    assert access.token() == "tok-2"
    assert (
        ClusterAccess.in_cluster({**env, "KUBERNETES_SERVICE_HOST": "fd00::1"}, tmp_path).server
        == "https://[fd00::1]:443"
    )
    with pytest.raises(StartupError, match="not running in a Kubernetes pod"):
        ClusterAccess.in_cluster({}, tmp_path)


# ---- the command ------------------------------------------------------------------------------------


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    return (0 if e.value.code is None else int(e.value.code)), out, ANSI.sub("", err)


def test_cli_writes_yaml_documents_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(
        ["deploy", "k8s", "disagg", "--engine", "mocker", "--k8s-namespace", "llm"], capsys
    )
    assert code == 0, err
    docs = list(yaml.safe_load_all(out))
    assert docs == k8s.manifests(cfg_of("disagg", engine="mocker"), namespace="llm")
    assert err == ""


def test_cli_writes_a_file_or_a_file_per_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["deploy", "k8s", "agg", "-w", "3", "-o", str(tmp_path / "all.yaml")], capsys)
    assert code == 0, err
    docs = list(yaml.safe_load_all((tmp_path / "all.yaml").read_text()))
    assert by_kind(docs, "Deployment")["dynamo-worker"]["spec"]["replicas"] == 3
    code, _, err = run_cli(["deploy", "k8s", "agg", "-o", f"{tmp_path / 'dir'}/"], capsys)
    assert code == 0, err
    files = sorted(p.name for p in (tmp_path / "dir").iterdir())
    assert len(files) == len(docs) and files[0] == "00-configmap-dynamo-profile.yaml"


@pytest.mark.parametrize(
    "argv",
    [
        ["deploy", "k8s", "no-such-profile"],
        ["deploy", "k8s", "agg", "--k8s-namespace", "Bad_NS"],
        ["deploy", "k8s", "agg", "--set", "frontend.port=0"],
    ],
)
def test_cli_bad_input_exits_2_with_one_error_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(argv, capsys)
    assert code == 2
    assert out == ""
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    assert "hint:" in err
