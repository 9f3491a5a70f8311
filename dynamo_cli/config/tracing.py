"""The tracing profile keys: OpenTelemetry spans of each request, exported over OTLP (off by default)."""

from __future__ import annotations

from pydantic import Field

from dynamo_cli.config.base import StrictModel


class TracingConfig(StrictModel):
    enabled: bool = Field(
        False,
        description="Trace each request through frontend, router and worker (OpenTelemetry; needs the "
        "'tracing' extra installed).",
    )
    otlp_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP URL spans are sent to; unset: the OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or "
        "OTEL_EXPORTER_OTLP_ENDPOINT environment variable, else http://localhost:4318/v1/traces.",
    )
    sample_ratio: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="Share of requests traced (the frontend decides, the rest follow).",
    )
