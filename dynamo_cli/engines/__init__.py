"""Engines: `mocker` (simulated, GPU-free) and `vllm` (real). Heavy imports stay inside create_engine."""

from __future__ import annotations

from dynamo_cli.config.models import DynamoConfig
from dynamo_cli.engines.base import Engine
from dynamo_cli.errors import StartupError
from dynamo_cli.models.resolve import ModelInfo


def create_engine(cfg: DynamoConfig, info: ModelInfo, *, instance_seed: int = 0) -> Engine:
    if cfg.engine == "mocker":
        from dynamo_cli.engines.mocker import MockerEngine

        return MockerEngine(
            cfg.mocker,
            vocab_size=info.vocab_size,
            eos_token_ids=info.eos_token_ids,
            instance_seed=instance_seed,
        )
    raise StartupError(
        f"engine '{cfg.engine}' is not available in this build yet",
        hint="use --engine mocker",
    )
