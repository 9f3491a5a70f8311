"""The planner's Kubernetes connector: worker groups are Deployments, scaled through their scale subresource.

It talks to the API server over plain HTTPS (httpx) with the pod's service account, so the planner
needs no Kubernetes client library. The calls, and the only ones the planner's Role permits:

  GET   /apis/apps/v1/namespaces/NS/deployments/NAME/scale     replicas()
  PATCH /apis/apps/v1/namespaces/NS/deployments/NAME/scale     scale(): {"spec": {"replicas": N}}
  PATCH /apis/apps/v1/namespaces/NS/deployments/NAME           scale(): the reason, as an annotation

Scale-down drains: Kubernetes sends the removed pods SIGTERM, the worker role deregisters and finishes
its in-flight requests (supervisor.stop_timeout_s), and the pods' terminationGracePeriodSeconds
(deploy.k8s.drain_grace_s) is set to outlast that.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from dynamo_cli.config.models import DynamoConfig, Group
from dynamo_cli.deploy.k8s import REASON_ANNOTATION, deployment_name, worker_groups
from dynamo_cli.errors import RuntimeFailure, StartupError

logger = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MERGE_PATCH = "application/merge-patch+json"
_MAX_REASON = 256


class KubernetesError(RuntimeFailure):
    """The API server refused or failed a call; ``status`` is its HTTP status (0: no answer)."""

    def __init__(self, message: str, hint: str | None = None, status: int = 0):
        super().__init__(message, hint)
        self.status = status


@dataclass(frozen=True)
class ClusterAccess:
    """Where the API server is and how to authenticate to it. ``token`` is read before every call:
    the kubelet rotates the service account's token file."""

    server: str
    namespace: str
    token: Callable[[], str]
    ca_file: str | None = None

    @classmethod
    def in_cluster(
        cls, environ: Mapping[str, str] | None = None, account_dir: Path = SERVICE_ACCOUNT_DIR
    ) -> ClusterAccess:
        environ = os.environ if environ is None else environ
        host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
        token_file = account_dir / "token"
        if not host or not port or not token_file.is_file():
            raise StartupError(
                "not running in a Kubernetes pod (no KUBERNETES_SERVICE_HOST or service account token)",
                hint="run the planner in the cluster with the manifests of `dynamo deploy k8s`",
            )
        host = f"[{host}]" if ":" in host else host  # an IPv6 address
        ns_file, ca_file = account_dir / "namespace", account_dir / "ca.crt"
        namespace = ns_file.read_text().strip() if ns_file.is_file() else "default"
        ca = str(ca_file) if ca_file.is_file() else None
        return cls(f"https://{host}:{port}", namespace, lambda: token_file.read_text().strip(), ca)


class KubernetesConnector:
    """The Connector of a deployment written by `dynamo deploy k8s`, from inside its planner pod."""

    def __init__(
        self,
        cfg: DynamoConfig,
        access: ClusterAccess,
        *,
        timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.access = access
        self.names: dict[Group, str] = {g: deployment_name(cfg, g) for g in worker_groups(cfg)}
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=access.ca_file) if access.ca_file else True
        )
        self._client = httpx.AsyncClient(
            base_url=access.server, timeout=timeout_s, verify=verify, transport=transport
        )

    async def __aenter__(self) -> KubernetesConnector:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    def _path(self, group: Group, *, scale: bool) -> str:
        name = self.names.get(group)
        if name is None:
            raise KubernetesError(
                f"this deployment has no {group} Deployment to scale",
                hint="only a disaggregated profile has prefill workers",
            )
        path = f"/apis/apps/v1/namespaces/{self.access.namespace}/deployments/{name}"
        return f"{path}/scale" if scale else path

    async def replicas(self) -> dict[Group, int]:
        out: dict[Group, int] = {}
        for group in self.names:
            scale = await self._call("GET", self._path(group, scale=True), missing_ok=True)
            if scale is None:
                logger.warning("Deployment %s is gone; %s not counted", self.names[group], group)
                continue
            out[group] = int(scale.get("spec", {}).get("replicas") or 0)
        return out

    async def scale(self, group: Group, replicas: int, reason: str) -> None:
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, not {replicas}")
        await self._call("PATCH", self._path(group, scale=True), {"spec": {"replicas": replicas}})
        logger.info("scaled %s to %d: %s", self.names[group], replicas, reason)
        note = {"metadata": {"annotations": {REASON_ANNOTATION: reason[:_MAX_REASON]}}}
        await self._call("PATCH", self._path(group, scale=False), note)

    async def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, missing_ok: bool = False
    ) -> dict[str, Any] | None:
        headers = {"Authorization": f"Bearer {self.access.token()}", "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = MERGE_PATCH
        try:
            r = await self._client.request(method, path, json=body, headers=headers)
        except httpx.TimeoutException as e:
            raise KubernetesError(
                f"the Kubernetes API at {self.access.server} did not answer {method} {path} in time",
                hint="is the API server reachable from the planner pod?",
            ) from e
        except httpx.HTTPError as e:
            raise KubernetesError(
                f"cannot reach the Kubernetes API at {self.access.server}: {e}",
                hint="is the API server reachable from the planner pod?",
            ) from e
        if r.status_code == 404 and missing_ok:
            return None
        if r.is_success:
            data = r.json()
            return data if isinstance(data, dict) else {}
        raise _error(method, path, r)


def _error(method: str, path: str, r: httpx.Response) -> KubernetesError:
    """The API server's Status message, with what to do about it."""
    try:
        status = r.json()
        message = status.get("message") if isinstance(status, dict) else None
    except ValueError:
        message = None
    message = message or r.text.strip()[:200] or r.reason_phrase
    hints = {
        401: "the service account token was rejected; is the pod's token mounted and current?",
        403: "the planner's Role must allow get/patch on deployments and deployments/scale "
        "(apply the RBAC objects of `dynamo deploy k8s`)",
        404: "apply the manifests of `dynamo deploy k8s` in the planner's namespace",
        409: "another client changed the Deployment at the same time; the next decision retries",
    }
    hint = hints.get(r.status_code, "the API server failed; the next decision retries")
    return KubernetesError(
        f"Kubernetes API {method} {path}: {r.status_code} {message}", hint=hint, status=r.status_code
    )
