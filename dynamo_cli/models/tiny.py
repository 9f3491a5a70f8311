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


def build_tiny_llama(
    dest: Path, *, seed: int = 0, layers: int = 2, hidden: int = 128, weight_scale: float = 1.0
) -> Path:
    """``weight_scale`` multiplies every matrix but the embedding: at 1 the random model repeats one
    token whatever the context; at ~8 its next tokens depend on the context (what a test of KV that
    moved between engines needs: wrong KV must give other tokens)."""
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
    if weight_scale != 1.0:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.dim() == 2 and "embed" not in name:
                    param.mul_(weight_scale)
    model.save_pretrained(str(dest), safe_serialization=True)
    return dest
