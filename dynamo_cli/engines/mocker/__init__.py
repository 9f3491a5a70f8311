"""The mocker: a GPU-free engine that simulates vLLM's scheduling, KV cache and timing."""

from dynamo_cli.engines.mocker.engine import MockerEngine

__all__ = ["MockerEngine"]
