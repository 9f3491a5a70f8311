"""Discovery: each process registers its instances under a lease; watchers see joins and leaves.

Keys: ``dynamo/<namespace>/<component>/<instance id hex>`` -> JSON description. The instance id is
the lease id, so a process that dies (even with SIGKILL) vanishes when its lease expires.
`Discovery` is the small interface; `EtcdDiscovery` implements it on etcd (aetcd, asyncio).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import logging
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from dynamo_cli.errors import StartupError
from dynamo_cli.transport import etcd_gateway as gateway
from dynamo_cli.transport.etcd_gateway import etcd_credentials, http_base, parse_etcd_endpoint

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


class LeaseKeeper(threading.Thread):
    """Keeps one etcd lease alive from its own thread, over etcd's JSON gateway (plain HTTP, no gRPC),
    so a stalled event loop cannot cost the process its lease. ``on_lost`` is called (from this thread)
    once etcd says the lease is gone."""

    def __init__(self, endpoint: str, lease_id: int, ttl: int, on_lost: Callable[[], object]):
        super().__init__(name=f"etcd-lease-{lease_id:x}", daemon=True)
        self.endpoint = endpoint
        self._login = etcd_credentials(endpoint) is not None  # etcd with auth: a token per session
        self.url = http_base(endpoint) + "/v3/lease/keepalive"
        self.lease_id = lease_id
        self.interval = max(ttl / 3, 0.5)
        self.on_lost = on_lost
        self.stopped = threading.Event()
        self.refreshed = 0  # successful refreshes, for tests and logs

    def run(self) -> None:
        body = json.dumps({"ID": self.lease_id}).encode()
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via HTTP_PROXY
        failures = 0
        token: str | None = None
        while not self.stopped.wait(self.interval):
            try:
                headers = {"content-type": "application/json"}
                if self._login:
                    token = token or gateway.token(self.endpoint, self.interval)
                    headers["authorization"] = token or ""
                req = urllib.request.Request(self.url, data=body, headers=headers)
                with opener.open(req, timeout=self.interval) as reply:
                    result = json.loads(reply.read()).get("result", {})
            except Exception as e:
                token = None  # an expired token is taken anew
                failures += 1
                logger.warning("etcd lease refresh failed (%d in a row): %s", failures, e)
                continue
            if self.stopped.is_set():
                return
            if int(result.get("TTL", 0)) <= 0:
                self.on_lost()
                return
            failures = 0
            self.refreshed += 1

    def stop(self) -> None:
        self.stopped.set()


class EtcdDiscovery(Discovery):
    """``reregister``: when the lease is lost anyway, take a new one and register again (a stateless
    role: frontend, router), instead of setting ``lease_lost`` (a worker, whose lease is its identity)."""

    def __init__(
        self, client: Any, endpoint: str, namespace: str, lease: Any, ttl: int, *, reregister: bool = False
    ):
        self._client = client
        self._endpoint = endpoint
        self.namespace = namespace
        self._lease = lease
        self._ttl = ttl
        self._reregister = reregister
        self._keys: dict[str, bytes] = {}
        self._data: dict[str, dict[str, Any]] = {}
        self._watches: list[Any] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._loop = asyncio.get_running_loop()
        self.lease_lost = asyncio.Event()
        self.keeper = self._keep(lease)

    def _keep(self, lease: Any) -> LeaseKeeper:
        keeper = LeaseKeeper(
            self._endpoint, int(lease.id), self._ttl, lambda: self._loop.call_soon_threadsafe(self._on_lost)
        )
        keeper.start()
        return keeper

    def _on_lost(self) -> None:
        logger.error("discovery lease %x expired; this instance is no longer visible", self.instance_id)
        if not self._reregister:
            self.lease_lost.set()
            return
        self._tasks.append(asyncio.create_task(self._renew(), name="etcd-lease-renew"))

    async def _renew(self) -> None:
        """A new lease and every registration again; gives up (lease_lost) after a few tries."""
        for attempt in range(3):
            try:
                lease = await asyncio.wait_for(self._client.lease(self._ttl), self._ttl)
                self._lease = lease
                self.keeper = self._keep(lease)
                for component, data in list(self._data.items()):
                    await asyncio.wait_for(self.register(component, data), self._ttl)
                logger.warning("registered again under a new lease %x", self.instance_id)
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                logger.warning("registering again failed (%d/3): %s", attempt + 1, e)
                await asyncio.sleep(1.0)
        self.lease_lost.set()

    @classmethod
    async def connect(
        cls, endpoint: str, namespace: str, *, ttl: int = 10, timeout: float = 5.0, reregister: bool = False
    ) -> EtcdDiscovery:
        import aetcd  # grpc is slow to import; only processes that use discovery pay for it

        host, port = parse_etcd_endpoint(endpoint)
        user, password = etcd_credentials(endpoint) or (None, None)
        client = aetcd.Client(
            host=host, port=port, username=user, password=password, timeout=timeout,
            connect_wait_timeout=int(timeout),
        )  # fmt: skip
        try:
            await asyncio.wait_for(client.connect(), timeout)
            lease = await asyncio.wait_for(client.lease(ttl), timeout)
        except Exception as e:
            with contextlib.suppress(Exception):
                await client.close()
            raise StartupError(
                f"cannot reach etcd at {host}:{port} ({type(e).__name__})",
                hint="start etcd there, or let `dynamo run` spawn one (infra.etcd: auto)",
            ) from e
        return cls(client, endpoint, namespace, lease, ttl, reregister=reregister)

    @property
    def instance_id(self) -> int:
        return int(self._lease.id)

    async def register(self, component: str, data: dict[str, Any]) -> None:
        key = f"{_key_prefix(self.namespace, component)}{self.instance_id:x}".encode()
        value = orjson.dumps({**data, "instance_id": self.instance_id})
        old = self._keys.get(component)
        await self._client.put(key, value, lease=self._lease)
        self._keys[component] = key
        self._data[component] = data
        if old is not None and old != key:  # registered again under a new lease
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._client.delete(old), 2)

    async def deregister(self, component: str) -> None:
        self._data.pop(component, None)
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

    async def _snapshot(self, prefix: bytes, component: str) -> tuple[int, dict[int, Instance]]:
        snapshot = await asyncio.wait_for(self._client.get_prefix(prefix), self._ttl)
        found = (self._instance(component, kv.key, kv.value) for kv in snapshot)
        return snapshot.header.revision, {i.instance_id: i for i in found if i is not None}

    async def watch(self, component: str, listener: Listener) -> list[Instance]:
        """A watch that survives etcd restarting: when the stream breaks, it takes a new snapshot,
        reports what changed meanwhile, and watches on from there."""
        from aetcd.rtypes import EventKind

        prefix = _key_prefix(self.namespace, component).encode()
        revision, known = await self._snapshot(prefix, component)
        initial = list(known.values())

        def tell(kind: str, inst: Instance) -> None:
            try:
                listener(DiscoveryEvent(kind, inst))
            except Exception:
                logger.exception("discovery listener failed")

        async def pump() -> None:
            nonlocal revision, known
            watch = None
            while True:
                try:
                    opened = self._client.watch_prefix(prefix, start_revision=revision + 1)
                    watch = await asyncio.wait_for(opened, self._ttl)
                    assert watch is not None
                    self._watches.append(watch)
                    async for event in watch:
                        revision = max(revision, int(event.kv.mod_revision))
                        inst = self._instance(component, event.kv.key, event.kv.value)
                        if inst is None:
                            continue
                        if event.kind == EventKind.DELETE:
                            known.pop(inst.instance_id, None)
                            tell("delete", inst)
                        else:
                            known[inst.instance_id] = inst
                            tell("put", inst)
                    raise ConnectionError("the watch stream ended")
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    logger.warning("discovery watch on %s broke (%s); watching again", component, e)
                    if watch is not None and watch in self._watches:
                        self._watches.remove(watch)  # a broken stream: nothing to cancel at close
                    watch = None
                while True:  # until etcd answers again
                    await asyncio.sleep(0.5)
                    try:
                        revision, now = await self._snapshot(prefix, component)
                        break
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        continue
                for iid, inst in known.items():
                    if iid not in now:
                        tell("delete", inst)
                for iid, inst in now.items():
                    if known.get(iid) != inst:
                        tell("put", inst)
                known = now

        self._tasks.append(asyncio.create_task(pump(), name=f"discovery-watch:{component}"))
        return initial

    async def close(self) -> None:
        self.keeper.stop()
        for task in self._tasks:
            task.cancel()
        if self._tasks:  # bounded: a watch being created in aetcd does not always end when cancelled
            await asyncio.wait(self._tasks, timeout=2)
        for watch in self._watches:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(watch.cancel(), 2)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._client.revoke_lease(self._lease.id), 2)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._client.close(), 2)
