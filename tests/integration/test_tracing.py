"""Tracing on (tracing.enabled): one request through the frontend's client, a router role and a worker role
on real etcd and NATS is one trace, with a span from each and the request id on all of them.

The three run in this process, each with its own TracerProvider (service.name frontend, router, worker)
and in-memory exporter, as three role processes would have; only the traceparent in the request
messages links their spans."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dynamo_cli import tracing
from dynamo_cli.config.loader import load_config
from dynamo_cli.frontend.client import WorkerClient
from dynamo_cli.models.resolve import resolve_model
from dynamo_cli.roles.router import RouterRole
from dynamo_cli.roles.worker import WorkerRole
from dynamo_cli.transport import protocol
from dynamo_cli.transport.discovery import EtcdDiscovery
from dynamo_cli.transport.messaging import NatsRequestPlane
from dynamo_cli.transport.wire import EngineRequest, SamplingOptions
from dynamo_cli.transport.workers import InstanceSet

pytestmark = pytest.mark.integration

KINDS = ("frontend", "router", "worker")


async def test_one_request_is_one_trace_across_frontend_router_and_worker(
    etcd_url: str, nats_url: str, namespace: str
) -> None:
    sets = [f"infra.etcd={etcd_url}", f"infra.nats={nats_url}", "log_level=warning", "router.replicas=1"]
    sets += ["tracing.enabled=true", "workers.count=1"]
    cfg = load_config("agg", sets=sets, flags={"engine": "mocker", "namespace": namespace})
    exporters = {kind: InMemorySpanExporter() for kind in KINDS}
    for kind, exporter in exporters.items():
        tracing.setup(cfg.tracing, kind, exporter=exporter)
    model = resolve_model(cfg.model, cfg.served_model_name)
    worker, router = WorkerRole(cfg, model), RouterRole(cfg)
    plane: NatsRequestPlane | None = None
    discovery: EtcdDiscovery | None = None
    try:
        await worker.start()
        assert worker.discovery is not None
        worker_id = worker.discovery.instance_id
        await router.start()
        plane = await NatsRequestPlane.connect(nats_url, name="frontend")
        discovery = await EtcdDiscovery.connect(etcd_url, namespace)
        workers, routers = InstanceSet(), InstanceSet()
        workers.reset(await discovery.watch(protocol.WORKER, workers.on_event))
        routers.reset(await discovery.watch(protocol.ROUTER, routers.on_event))
        client = WorkerClient(plane, cfg, workers, routers=routers)
        assert client.tracer.enabled
        request = EngineRequest("req-traced", list(range(1, 50)), SamplingOptions(5, ignore_eos=True))
        outs = [out async for out in client.generate(model.name, request)]
    finally:
        for closing in (plane, discovery, router, worker):
            if closing is not None:
                await closing.close()
        for kind in KINDS:
            tracing.shutdown(kind)  # flushes the batches into the exporters
    assert sum(len(o.token_ids) for o in outs) == 5

    spans = {kind: exporters[kind].get_finished_spans() for kind in KINDS}
    assert {kind: [s.name for s in found] for kind, found in spans.items()} == {
        "frontend": ["frontend.generate"],
        "router": ["router.route"],
        "worker": ["worker.generate"],
    }
    (front,), (route,), (work,) = spans["frontend"], spans["router"], spans["worker"]
    assert {s.resource.attributes["service.name"] for s in (front, route, work)} == set(KINDS)
    assert {s.attributes["dynamo.request_id"] for s in (front, route, work)} == {"req-traced"}
    # One trace: the frontend's span is its root, the router's decision and the worker's generation its
    # children (through the traceparent each message carried).
    assert front.parent is None
    assert {s.context.trace_id for s in (front, route, work)} == {front.context.trace_id}
    assert route.parent is not None and route.parent.span_id == front.context.span_id
    assert work.parent is not None and work.parent.span_id == front.context.span_id
    assert front.attributes["dynamo.completion_tokens"] == work.attributes["dynamo.completion_tokens"] == 5
    assert [e.name for e in work.events] == ["first_token"]
    assert route.attributes["dynamo.worker_id"] == f"{worker_id:x}"
