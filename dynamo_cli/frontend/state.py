"""What the HTTP API's handlers share: the served model, its tokenizer, the workers and the client that
reaches them, the metrics, the body parser and the preprocessing threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from dynamo_cli.frontend.client import WorkerClient
from dynamo_cli.frontend.metrics import FrontendMetrics
from dynamo_cli.frontend.parsing import BodyParser
from dynamo_cli.frontend.prepare import ChatSetup
from dynamo_cli.models.tokenizer import ModelTokenizer
from dynamo_cli.routing.service import RoutingService
from dynamo_cli.transport.workers import InstanceSet


@dataclass
class FrontendState:
    model: str
    tokenizer: ModelTokenizer
    client: WorkerClient
    workers: InstanceSet
    metrics: FrontendMetrics
    parser: BodyParser  # JSON and the caps on it, large bodies in other processes
    # Templating and tokenisation run here, off the event loop (the encoders release the GIL).
    preprocess: ThreadPoolExecutor
    max_body: int  # bytes (frontend.max_body_mb)
    routing: RoutingService | None = None  # the embedded router, if any
    setup: ChatSetup = field(default_factory=lambda: ChatSetup("hermes", False, None))  # parsers in force
