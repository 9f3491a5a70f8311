"""Engines: `mocker` (simulated, GPU-free) and `vllm` (real). Heavy imports stay inside create_engine."""

from __future__ import annotations

from pathlib import Path

from dynamo_cli.config.models import DynamoConfig
from dynamo_cli.engines.base import Engine
from dynamo_cli.models.resolve import ModelInfo


def kv_block_size(cfg: DynamoConfig, on_gpu: bool | None = None) -> int:
    """Tokens per KV block for ``cfg``'s engine: what block hashes are computed over. The one place that
    knows it. vLLM's default is 16 on a GPU and 128 on CPU (its CPU attention needs a multiple of 32);
    ``on_gpu`` None: whether this machine shows an NVIDIA GPU (the frontend and router start from this
    guess and then take the size each worker advertises)."""
    if cfg.engine == "mocker":
        return cfg.mocker.block_size
    if cfg.vllm.block_size:
        return cfg.vllm.block_size
    if on_gpu is None:
        on_gpu = Path("/dev/nvidiactl").exists()
    return 16 if on_gpu else 128


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
