"""OpenTelemetry tracing of requests (``tracing.enabled``, off by default).

The frontend starts a span per generation request and sends its W3C ``traceparent`` in the messages it
sends the router and the worker, which make child spans of it: one trace per request, spans from three
processes, each carrying the request id (``dynamo.request_id``). Spans leave each process in batches
over OTLP/HTTP. OpenTelemetry is an optional dependency (the ``tracing`` extra), imported only when
tracing is on; off, a role holds ``DISABLED`` and a request costs one boolean check.
"""

from __future__ import annotations

import logging
from typing import Any

from dynamo_cli.config.tracing import TracingConfig
from dynamo_cli.errors import StartupError

logger = logging.getLogger(__name__)

REQUEST_ID = "dynamo.request_id"  # the attribute that links a request's spans to its logs


class Tracer:
    """The tracer of one role in this process. Callers check ``enabled`` before anything else."""

    def __init__(self, service: str = "", provider: Any = None):
        self.service = service
        self.enabled = provider is not None
        self._provider = provider
        self._tracer = provider.get_tracer("dynamo_cli") if provider is not None else None

    def start(self, name: str, request_id: str, parent: str | None = None) -> Any:
        """A started span, which the caller ends; the child of W3C traceparent ``parent`` when given."""
        assert self._tracer is not None, "check Tracer.enabled first"
        context = None
        if parent is not None:
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

            context = TraceContextTextMapPropagator().extract({"traceparent": parent})
        return self._tracer.start_span(name, context=context, attributes={REQUEST_ID: request_id})

    def shutdown(self) -> None:
        """Export what is still buffered, then stop."""
        if self._provider is not None:
            self._provider.shutdown()


DISABLED = Tracer()
_tracers: dict[str, Tracer] = {}  # by service name: one in a role process; one per role in a test


def setup(cfg: TracingConfig, service: str, exporter: Any = None) -> Tracer:
    """The tracer of role ``service`` (its ``service.name``): spans to ``exporter``, by default OTLP/HTTP
    to ``cfg.otlp_endpoint``. DISABLED when tracing is off."""
    if not cfg.enabled:
        return DISABLED
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=cfg.otlp_endpoint)
    except ImportError as e:
        raise StartupError(
            f"tracing.enabled is set but OpenTelemetry is not installed ({e.name} is missing)",
            hint="install the extra (pip install 'dynamo-cli[tracing]') or set tracing.enabled false",
        ) from e
    provider = TracerProvider(
        resource=Resource.create({"service.name": service}),
        sampler=ParentBased(TraceIdRatioBased(cfg.sample_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = _tracers[service] = Tracer(service, provider)
    logger.info("tracing on: %s spans to %s", service, cfg.otlp_endpoint or "the OTLP default endpoint")
    return tracer


def tracer(service: str) -> Tracer:
    """The tracer ``setup`` made for ``service``; DISABLED if none."""
    return _tracers.get(service, DISABLED)


def shutdown(service: str) -> None:
    """Flush and forget ``service``'s tracer (a no-op when tracing is off)."""
    found = _tracers.pop(service, None)
    if found is not None:
        found.shutdown()


def traceparent(span: Any) -> str | None:
    """The W3C traceparent that makes ``span`` the parent of another process's spans; None when the
    span is not sampled (the other processes then record nothing for the request)."""
    ctx = span.get_span_context()
    if not ctx.is_valid or not ctx.trace_flags.sampled:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
