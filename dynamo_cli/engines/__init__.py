"""Engines: `mocker` (simulated, GPU-free) and `vllm` (real). Heavy imports stay inside create_engine."""

from __future__ import annotations

from pathlib import Path

from dynamo_cli.config.models import DynamoConfig
from dynamo_cli.engines.base import Engine
from dynamo_cli.models.resolve import ModelInfo


def create_engine(cfg: DynamoConfig, info: ModelInfo, model_path: Path, *, instance_seed: int = 0) -> Engine:
    if cfg.engine == "mocker":
        from dynamo_cli.engines.mocker import MockerEngine

        return MockerEngine(
            cfg.mocker,
            vocab_size=info.vocab_size,
            eos_token_ids=info.eos_token_ids,
            instance_seed=instance_seed,
            model_path=model_path,
        )
    from dynamo_cli.engines.vllm_engine import VllmEngine

    return VllmEngine(cfg, model_path, seed=instance_seed)
