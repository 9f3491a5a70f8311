"""Tracing's switch and wire: off, nothing is set up and messages are unchanged; on, the traceparent
crosses the request messages; missing packages are a start-up error, not a traceback."""

from __future__ import annotations

import sys

import pytest

from dynamo_cli import tracing
from dynamo_cli.config.models import DynamoConfig
from dynamo_cli.config.tracing import TracingConfig
from dynamo_cli.errors import StartupError
from dynamo_cli.transport import protocol
from dynamo_cli.transport.wire import EngineRequest, SamplingOptions

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_tracing_is_off_by_default_and_then_sets_nothing_up() -> None:
    cfg = DynamoConfig()
    assert cfg.tracing.enabled is False
    assert tracing.setup(cfg.tracing, "unit-off") is tracing.DISABLED
    assert tracing.tracer("unit-off") is tracing.DISABLED and not tracing.DISABLED.enabled
    tracing.shutdown("unit-off")  # a no-op


def test_the_traceparent_crosses_the_messages_and_is_absent_when_off() -> None:
    req = EngineRequest("r1", [1, 2, 3], SamplingOptions(4))
    assert protocol.encode_generate(req) == protocol.encode_generate(req, None)
    assert protocol.decode_generate_traced(protocol.encode_generate(req)) == (req, None)
    assert protocol.decode_generate_traced(protocol.encode_generate(req, TP)) == (req, TP)
    assert protocol.decode_generate(protocol.encode_generate(req, TP)) == req  # an old reader ignores it
    assert "tp" not in protocol.decode_route(protocol.encode_route("m", 3, [], "r1"))
    assert protocol.decode_route(protocol.encode_route("m", 3, [], "r1", traceparent=TP))["tp"] == TP


def test_a_span_continues_the_trace_it_is_given() -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tracer = tracing.setup(TracingConfig(enabled=True), "unit-on", exporter=exporter)
    try:
        assert tracing.tracer("unit-on") is tracer and tracer.enabled
        span = tracer.start("child", "r1", parent=TP)
        tp = tracing.traceparent(span)
        span.end()
    finally:
        tracing.shutdown("unit-on")
    assert tracing.tracer("unit-on") is tracing.DISABLED
    (done,) = exporter.get_finished_spans()
    assert f"{done.context.trace_id:032x}" == TP.split("-")[1]
    assert done.parent is not None and f"{done.parent.span_id:016x}" == TP.split("-")[2]
    assert done.attributes is not None and done.attributes["dynamo.request_id"] == "r1"
    assert tp is not None and tp.split("-")[2] == f"{done.context.span_id:016x}"


def test_unsampled_requests_send_no_traceparent() -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    tracer = tracing.setup(TracingConfig(enabled=True, sample_ratio=0.0), "unit-0", InMemorySpanExporter())
    try:
        span = tracer.start("root", "r1")
        assert tracing.traceparent(span) is None
        span.end()
    finally:
        tracing.shutdown("unit-0")


def test_the_otlp_exporter_is_built_for_the_endpoint() -> None:
    cfg = TracingConfig(enabled=True, otlp_endpoint="http://127.0.0.1:1/v1/traces")
    tracer = tracing.setup(cfg, "unit-otlp")
    try:
        assert tracer.enabled
    finally:
        tracing.shutdown("unit-otlp")  # nothing was recorded: nothing is sent


def test_tracing_on_without_opentelemetry_is_a_startup_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    with pytest.raises(StartupError) as err:
        tracing.setup(TracingConfig(enabled=True), "unit-missing")
    assert "not installed" in str(err.value) and err.value.hint and "tracing" in err.value.hint
