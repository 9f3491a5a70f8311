"""Discovery: each process registers its instances under a lease; watchers see joins and leaves.

Keys: ``dynamo/<namespace>/<component>/<instance id hex>`` -> JSON description. The instance id is
the lease id, so a process that dies (even with SIGKILL) vanishes when its lease expires.
`Discovery` is the small interface; `EtcdDiscovery` implements it on etcd (aetcd, asyncio).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import orjson

from dynamo_cli.errors import StartupError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Instance:
    component: str
    instance_id: int
    data: dict[str, Any]

    @property
    def id_hex(self) -> str:
        return f"{self.instance_id:x}"


@dataclass(frozen=True, slots=True)
class DiscoveryEvent:
    kind: str  # "put" | "delete"
    instance: Instance


Listener = Callable[[DiscoveryEvent], None]


class Discovery(abc.ABC):
    namespace: str

    @property
    @abc.abstractmethod
    def instance_id(self) -> int:
        """This process's id (its lease)."""

    @abc.abstractmethod
    async def register(self, component: str, data: dict[str, Any]) -> None:
        """Announce an instance of ``component`` owned by this process."""

    @abc.abstractmethod
    async def deregister(self, component: str) -> None: ...

    @abc.abstractmethod
    async def watch(self, component: str, listener: Listener) -> list[Instance]:
        """Current instances of ``component``; ``listener`` then gets every change, in order."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop keep-alives and drop this process's registrations."""


def _key_prefix(namespace: str, component: str) -> str:
    return f"dynamo/{namespace}/{component}/"


def parse_etcd_endpoint(endpoint: str) -> tuple[str, int]:
    url = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
    return url.hostname or "127.0.0.1", url.port or 2379


class EtcdDiscovery(Discovery):
    def __init__(self, client: Any, namespace: str, lease: Any, ttl: int):
        self._client = client
        self.namespace = namespace
        self._lease = lease
        self._ttl = ttl
        self._keys: dict[str, bytes] = {}
        self._watches: list[Any] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._keepalive = asyncio.create_task(self._keep_alive(), name="etcd-lease-keepalive")
        self.lease_lost = asyncio.Event()

    @classmethod
    async def connect(
        cls, endpoint: str, namespace: str, *, ttl: int = 10, timeout: float = 5.0
    ) -> EtcdDiscovery:
        import aetcd  # grpc is slow to import; only processes that use discovery pay for it

        host, port = parse_etcd_endpoint(endpoint)
        client = aetcd.Client(host=host, port=port, timeout=timeout, connect_wait_timeout=int(timeout))
        try:
            await asyncio.wait_for(client.connect(), timeout)
            lease = await asyncio.wait_for(client.lease(ttl), timeout)
        except Exception as e:
            with contextlib.suppress(Exception):
                await client.close()
            raise StartupError(
                f"cannot reach etcd at {endpoint} ({type(e).__name__})",
                hint="start etcd there, or let `dynamo run` spawn one (infra.etcd: auto)",
            ) from e
        return cls(client, namespace, lease, ttl)

    @property
    def instance_id(self) -> int:
        return int(self._lease.id)

    async def _keep_alive(self) -> None:
        interval = max(self._ttl / 3, 0.5)
        failures = 0
        while True:
            await asyncio.sleep(interval)
            try:
                reply = await asyncio.wait_for(self._client.refresh_lease(self._lease.id), interval)
                if reply is not None and reply.TTL <= 0:
                    logger.error("discovery lease expired; this instance is no longer visible")
                    self.lease_lost.set()
                    return
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as e:
                failures += 1
                logger.warning("etcd lease refresh failed (%d in a row): %s", failures, e)

    async def register(self, component: str, data: dict[str, Any]) -> None:
        key = f"{_key_prefix(self.namespace, component)}{self.instance_id:x}".encode()
        value = orjson.dumps({**data, "instance_id": self.instance_id})
        await self._client.put(key, value, lease=self._lease)
        self._keys[component] = key

    async def deregister(self, component: str) -> None:
        key = self._keys.pop(component, None)
        if key is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._client.delete(key), 2)

    @staticmethod
    def _instance(component: str, key: bytes, value: bytes | None) -> Instance | None:
        try:
            instance_id = int(key.rsplit(b"/", 1)[1], 16)
        except (IndexError, ValueError):
            return None
        data = orjson.loads(value) if value else {}
        return Instance(component, instance_id, data)

    async def watch(self, component: str, listener: Listener) -> list[Instance]:
        from aetcd.rtypes import EventKind

        prefix = _key_prefix(self.namespace, component).encode()
        snapshot = await self._client.get_prefix(prefix)
        instances = [
            inst for kv in snapshot if (inst := self._instance(component, kv.key, kv.value)) is not None
        ]
        watch = await self._client.watch_prefix(prefix, start_revision=snapshot.header.revision + 1)
        self._watches.append(watch)

        async def pump() -> None:
            async for event in watch:
                inst = self._instance(component, event.kv.key, event.kv.value)
                if inst is None:
                    continue
                kind = "delete" if event.kind == EventKind.DELETE else "put"
                try:
                    listener(DiscoveryEvent(kind, inst))
                except Exception:
                    logger.exception("discovery listener failed")

        self._tasks.append(asyncio.create_task(pump(), name=f"discovery-watch:{component}"))
        return instances

    async def close(self) -> None:
        self._keepalive.cancel()
        for watch in self._watches:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(watch.cancel(), 2)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(self._keepalive, *self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._client.revoke_lease(self._lease.id), 2)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._client.close(), 2)
