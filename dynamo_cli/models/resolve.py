"""Model resolution: a local folder, the embedded default, or (with network) a Hugging Face id."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dynamo_cli.errors import StartupError, UsageError
from dynamo_cli.models import embedded

EMBEDDED_ALIASES = {None, "", "embedded", "smollm2", embedded.EMBEDDED_NAME}


@dataclass(frozen=True)
class ResolvedModel:
    path: Path  # a folder with tokenizer files and config.json
    name: str  # the name clients use


def resolve_model(
    spec: str | None, served_name: str | None = None, *, weights: bool = False
) -> ResolvedModel:
    """Turn the profile's `model` into a local folder (tokenizer and config; weights too if asked)."""
    if spec in EMBEDDED_ALIASES:
        path = embedded.prepare_weights() if weights else embedded.prepare_tokenizer_folder()
        return ResolvedModel(path, served_name or embedded.EMBEDDED_NAME)
    assert spec is not None
    path = Path(spec).expanduser()
    if path.is_dir():
        if not ((path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()):
            raise UsageError(
                f"model folder {path} has no tokenizer (tokenizer.json or tokenizer_config.json)",
                hint="point --model at a Hugging Face model folder",
            )
        return ResolvedModel(path.resolve(), served_name or path.name)
    if path.exists():
        raise UsageError(f"model '{spec}' is a file, not a folder", hint="pass the model's folder")
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return ResolvedModel(_download(spec), served_name or spec)
    raise UsageError(f"model '{spec}' is neither a folder nor a Hugging Face id", hint="check the path")


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise StartupError(
            f"cannot download '{repo_id}': huggingface_hub is not installed",
            hint="install the vllm extra (scripts/install.sh --vllm) or pass a local model folder",
        ) from e
    try:
        return Path(snapshot_download(repo_id))
    except Exception as e:
        raise StartupError(
            f"cannot download '{repo_id}' ({type(e).__name__})",
            hint="check the name and the network; offline, pass a local model folder",
        ) from e


@dataclass(frozen=True)
class ModelInfo:
    """What a worker needs to know of a model without loading its tokenizer."""

    vocab_size: int
    eos_token_ids: list[int]
    context_length: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype_bytes: int

    @property
    def kv_bytes_per_token(self) -> int:
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim * self.dtype_bytes


def read_model_info(folder: Path) -> ModelInfo:
    import json

    def load(name: str) -> dict:
        p = folder / name
        try:
            return json.loads(p.read_text()) if p.is_file() else {}
        except (OSError, ValueError) as e:
            raise StartupError(f"{p} is not readable JSON ({e})") from e

    cfg, gen = load("config.json"), load("generation_config.json")
    cfg = cfg.get("text_config", cfg)  # multimodal configs nest the language model
    eos: list[int] = []
    for src in (gen.get("eos_token_id"), cfg.get("eos_token_id")):
        eos.extend([src] if isinstance(src, int) else [int(x) for x in src or []])
    heads = int(cfg.get("num_attention_heads") or 1)
    hidden = int(cfg.get("hidden_size") or 0)
    dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16")
    return ModelInfo(
        vocab_size=int(cfg.get("vocab_size") or 32000),
        eos_token_ids=sorted(set(eos)),
        context_length=int(cfg.get("max_position_embeddings") or 4096),
        num_layers=int(cfg.get("num_hidden_layers") or 1),
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or (hidden // heads if hidden else 64)),
        dtype_bytes=4 if "32" in dtype else 2,
    )
