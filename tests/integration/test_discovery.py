"""Discovery on a real etcd: registration, watches, lease expiry after SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

from dynamo_cli.transport.discovery import DiscoveryEvent, EtcdDiscovery

pytestmark = pytest.mark.integration


async def _next_event(queue: asyncio.Queue[DiscoveryEvent], timeout: float) -> DiscoveryEvent:
    return await asyncio.wait_for(queue.get(), timeout)


async def test_watch_sees_joins_and_leaves(etcd_url: str, namespace: str) -> None:
    watcher = await EtcdDiscovery.connect(etcd_url, namespace, ttl=5)
    first = await EtcdDiscovery.connect(etcd_url, namespace, ttl=5)
    await first.register("worker", {"model": "m", "subject": "s1"})
    events: asyncio.Queue[DiscoveryEvent] = asyncio.Queue()
    snapshot = await watcher.watch("worker", events.put_nowait)
    assert [(i.instance_id, i.data["subject"]) for i in snapshot] == [(first.instance_id, "s1")]

    second = await EtcdDiscovery.connect(etcd_url, namespace, ttl=5)
    await second.register("worker", {"model": "m", "subject": "s2"})
    ev = await _next_event(events, 5)
    assert (ev.kind, ev.instance.instance_id, ev.instance.data["subject"]) == (
        "put",
        second.instance_id,
        "s2",
    )

    await second.deregister("worker")
    ev = await _next_event(events, 5)
    assert (ev.kind, ev.instance.instance_id) == ("delete", second.instance_id)

    await first.close()  # revokes the lease: its key goes at once
    ev = await _next_event(events, 5)
    assert (ev.kind, ev.instance.instance_id) == ("delete", first.instance_id)
    await second.close()
    await watcher.close()


async def test_components_and_namespaces_are_separate(etcd_url: str, namespace: str) -> None:
    a = await EtcdDiscovery.connect(etcd_url, namespace, ttl=5)
    b = await EtcdDiscovery.connect(etcd_url, namespace + "x", ttl=5)
    await a.register("router", {"subject": "r"})
    await b.register("worker", {"subject": "w"})
    assert await a.watch("worker", lambda e: None) == []
    assert [i.data["subject"] for i in await a.watch("router", lambda e: None)] == ["r"]
    await a.close()
    await b.close()


_REGISTER_AND_HANG = """
import asyncio, sys
from dynamo_cli.transport.discovery import EtcdDiscovery
async def main():
    d = await EtcdDiscovery.connect(sys.argv[1], sys.argv[2], ttl=2)
    await d.register("worker", {"subject": "doomed"})
    print(d.instance_id, flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


async def test_sigkilled_process_vanishes_when_its_lease_expires(etcd_url: str, namespace: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _REGISTER_AND_HANG, etcd_url, namespace], stdout=subprocess.PIPE, text=True
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)  # type: ignore[union-attr]
        instance_id = int(line)
        watcher = await EtcdDiscovery.connect(etcd_url, namespace, ttl=5)
        events: asyncio.Queue[DiscoveryEvent] = asyncio.Queue()
        snapshot = await watcher.watch("worker", events.put_nowait)
        assert [i.instance_id for i in snapshot] == [instance_id]
        # Alive for several TTLs thanks to its keep-alive...
        await asyncio.sleep(3.0)
        assert events.empty(), "a live process lost its registration"
        os.kill(proc.pid, signal.SIGKILL)
        ev = await _next_event(events, 10)  # its lease expires; etcd tells the watcher
        assert (ev.kind, ev.instance.instance_id) == ("delete", instance_id)
        await watcher.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]


def _spin(seconds: float) -> None:
    """Hold the event loop in Python code (the GIL is shared every switch interval)."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1


@pytest.mark.parametrize("block", [time.sleep, _spin], ids=["sleep", "busy"])
async def test_the_lease_is_kept_while_the_loop_is_blocked(etcd_url: str, namespace: str, block) -> None:
    ttl = 2
    d = await EtcdDiscovery.connect(etcd_url, namespace, ttl=ttl)
    await d.register("frontend", {"url": "u"})
    iid = d.instance_id
    block(3 * ttl)  # the loop does nothing for 3 TTLs
    watcher = await EtcdDiscovery.connect(etcd_url, namespace, ttl=5)
    assert [i.instance_id for i in await watcher.watch("frontend", lambda e: None)] == [iid]
    assert d.keeper.refreshed >= 3 * ttl / (ttl / 3) - 2
    assert not d.lease_lost.is_set()
    await watcher.close()
    await d.close()


async def test_a_stateless_role_whose_lease_expired_registers_again(etcd_url: str, namespace: str) -> None:
    frontend = await EtcdDiscovery.connect(etcd_url, namespace, ttl=2, reregister=True)
    worker = await EtcdDiscovery.connect(etcd_url, namespace, ttl=2)
    await frontend.register("frontend", {"url": "u"})
    await worker.register("worker", {"subject": "s"})
    old = frontend.instance_id
    watcher = await EtcdDiscovery.connect(etcd_url, namespace, ttl=5)
    events: asyncio.Queue[DiscoveryEvent] = asyncio.Queue()
    await watcher.watch("frontend", events.put_nowait)
    # etcd drops both leases (as it does when keep-alives stopped reaching it for a TTL).
    await watcher._client.revoke_lease(old)
    await watcher._client.revoke_lease(worker.instance_id)
    assert (await _next_event(events, 5)).kind == "delete"
    ev = await _next_event(events, 10)
    assert (ev.kind, ev.instance.data["url"]) == ("put", "u")
    assert ev.instance.instance_id == frontend.instance_id != old
    await asyncio.wait_for(worker.lease_lost.wait(), 10)  # a worker's lease is its identity: it says so
    assert not frontend.lease_lost.is_set()
    for d in (watcher, frontend, worker):
        await d.close()
