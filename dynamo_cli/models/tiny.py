"""A tiny random-weight Llama (~7M parameters) with the embedded model's tokenizer and chat template:
a real vLLM model that loads in seconds, for tests and benchmarks (its text is noise; its token
counts, determinism and KV behaviour are real)."""

from __future__ import annotations

import shutil
from pathlib import Path

from dynamo_cli.models.embedded import prepare_tokenizer_folder

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
)


def build_tiny_llama(dest: Path, *, seed: int = 0, layers: int = 2, hidden: int = 128) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (dest / "model.safetensors").is_file():
        return dest
    source = prepare_tokenizer_folder()
    dest.mkdir(parents=True, exist_ok=True)
    for name in _TOKENIZER_FILES:
        shutil.copy2(source / name, dest / name)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=hidden // 2,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(dest), safe_serialization=True)
    return dest
