"""The profile's model: a folder whose tokenizer and chat template load, the embedded model, or a
Hugging Face id in the local cache. Never downloads, never converts, never writes."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dynamo_cli.doctor.checks import Context, Result, Status
from dynamo_cli.doctor.system import cache_dirs
from dynamo_cli.errors import DynamoError
from dynamo_cli.models import embedded
from dynamo_cli.models.resolve import EMBEDDED_ALIASES

_WEIGHTS = ("*.safetensors", "*.bin", "*.pt")


@dataclass(frozen=True)
class ModelPlace:
    """Where the model is, or will be: a folder to read now, or a note on what the first run does."""

    kind: Literal["embedded", "folder", "hf"]
    label: str
    folder: Path | None = None
    status: Status = "PASS"  # for a model with no folder yet
    note: str = ""
    fix: str | None = None


def hf_snapshot(repo_id: str, hub: Path) -> Path | None:
    """The cached snapshot of a Hugging Face model (the one refs/main names, else the newest)."""
    base = hub / f"models--{repo_id.replace('/', '--')}"
    ref = base / "refs" / "main"
    if ref.is_file() and (snap := base / "snapshots" / ref.read_text().strip()).is_dir():
        return snap
    snaps = sorted((base / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime)
    return snaps[-1] if snaps else None


def locate(ctx: Context) -> ModelPlace:
    """What `resolve_model` will find, asked once, without its side effects."""

    def find() -> ModelPlace:
        spec = ctx.cfg.model
        if spec in EMBEDDED_ALIASES:
            label = f"embedded {embedded.EMBEDDED_NAME}"
            folder = embedded.cache_root() / "models" / embedded.EMBEDDED_NAME
            if (folder / "tokenizer.json").is_file() and (folder / "config.json").is_file():
                return ModelPlace("embedded", label, folder)
            try:
                embedded.gguf_path()
            except DynamoError as e:
                return ModelPlace("embedded", label, status="FAIL", note=e.message, fix=e.hint)
            return ModelPlace("embedded", label, note="its tokenizer folder is written at first run (~2 s)")
        assert spec is not None
        path = Path(spec).expanduser()
        if path.is_dir():
            return ModelPlace("folder", str(path), path)
        if path.exists():
            return ModelPlace(
                "folder", spec, status="FAIL", note="is a file, not a folder", fix="pass the model's folder"
            )
        if spec.count("/") != 1 or spec.startswith((".", "/")):
            return ModelPlace(
                "folder",
                spec,
                status="FAIL",
                note="is neither a folder nor a Hugging Face id",
                fix="check the path",
            )
        snap = hf_snapshot(spec, cache_dirs(ctx.environ)["HF cache"])
        if snap is not None:
            return ModelPlace("hf", f"{spec} (HF cache)", snap)
        if ctx.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            return ModelPlace(
                "hf",
                spec,
                status="FAIL",
                note="is not in the local Hugging Face cache and HF_HUB_OFFLINE is set",
                fix="unset HF_HUB_OFFLINE to download it, or pass a local model folder",
            )
        return ModelPlace(
            "hf",
            spec,
            status="WARN",
            note="is not in the local Hugging Face cache: the first run downloads it (needs the network)",
            fix=f"download it ahead: `hf download {spec}`, or pass a local model folder",
        )

    place: ModelPlace = ctx.once("model", find)
    return place


def context_length(ctx: Context) -> int | None:
    from dynamo_cli.models.resolve import read_model_info

    place = locate(ctx)
    if place.folder is None:
        return None
    try:
        return read_model_info(place.folder).context_length
    except DynamoError:
        return None


def check_model(ctx: Context) -> Iterator[Result]:
    place = locate(ctx)
    if place.folder is None:
        yield Result("model", place.status, f"{place.label} {place.note}".strip(), place.fix)
        return
    from dynamo_cli.models.tokenizer import ModelTokenizer

    try:
        tok = ModelTokenizer(place.folder, fast_encode=False)
    except Exception as e:  # a broken tokenizer.json raises whatever the library raises
        message, hint = (e.message, e.hint) if isinstance(e, DynamoError) else (str(e), None)
        yield Result(
            "model",
            "FAIL",
            f"{place.label}: the tokenizer does not load ({message})",
            hint or "the folder needs a tokenizer.json that the `tokenizers` library reads",
        )
        return
    what = f"{place.label}: tokenizer of {tok.vocab_size} tokens, context {tok.context_length}"
    if tok.chat_template is None:
        yield Result(
            "model",
            "WARN",
            f"{what}, no chat template: /v1/chat/completions will fail, /v1/completions works",
            "add chat_template to tokenizer_config.json (or a chat_template.jinja file)",
        )
        return
    try:
        tok.render_chat([{"role": "user", "content": "Hello"}])
    except Exception as e:
        yield Result(
            "model",
            "WARN",
            f"{what}; the chat template fails on a one-message chat ({type(e).__name__}: {e})",
            "fix the chat template in tokenizer_config.json; /v1/completions works meanwhile",
        )
        return
    yield Result("model", "PASS", f"{what}, chat template renders")


def check_weights(ctx: Context) -> Iterator[Result]:
    """vLLM loads weights; the mocker needs none."""
    if ctx.cfg.engine != "vllm":
        return
    place = locate(ctx)
    if place.folder is not None and (files := [f for g in _WEIGHTS for f in place.folder.glob(g)]):
        size = sum(f.stat().st_size for f in files) / (1 << 30)
        yield Result("weights", "PASS", f"{len(files)} weight file(s), {size:.2f} GiB")
    elif place.kind == "embedded" and place.status != "FAIL":
        if importlib.util.find_spec("torch") and importlib.util.find_spec("transformers"):
            yield Result("weights", "PASS", "converted from the embedded GGUF at first run (20-40 s)")
        else:
            yield Result(
                "weights",
                "FAIL",
                "converting the embedded model's weights needs torch and transformers",
                "scripts/install.sh --vllm, or pass --model with a model folder",
            )
    elif place.folder is not None and place.kind == "hf":
        yield Result(
            "weights",
            "WARN",
            f"the cached {place.folder} has no weight files: the first run downloads them",
            f"download them ahead: `hf download {ctx.cfg.model}`",
        )
    elif place.folder is not None:
        yield Result(
            "weights",
            "FAIL",
            f"{place.folder} has no weight files (*.safetensors, *.bin)",
            "point --model at a complete model folder",
        )
