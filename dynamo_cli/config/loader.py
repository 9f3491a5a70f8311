"""The one loader: model defaults < profile YAML < environment < --set a.b=c < explicit flags."""

from __future__ import annotations

import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from dynamo_cli.config.frontend import redacted
from dynamo_cli.config.keys import underscored
from dynamo_cli.config.models import DynamoConfig
from dynamo_cli.errors import ConfigError

# Environment variables that map onto profile keys (the reference system's names where it has them).
ENV_KEYS: dict[str, str] = {
    "ETCD_ENDPOINTS": "infra.etcd",
    "NATS_SERVER": "infra.nats",
    "DYNAMO_NAMESPACE": "namespace",
    "DYNAMO_MODEL": "model",
    "DYNAMO_ENGINE": "engine",
}
# Any key can also be set as DYNAMO__SECTION__KEY=value (double underscores between levels).
ENV_PREFIX = "DYNAMO__"


def profiles_dir() -> Path:
    """Where the built-in profiles live: the repo's profiles/ or, in a wheel, the packaged copy."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / "profiles", here / "profiles"):
        if candidate.is_dir():
            return candidate
    return here.parent / "profiles"


def builtin_profiles() -> list[str]:
    return sorted(p.stem for p in profiles_dir().glob("*.yaml"))


def resolve_profile_path(profile: str) -> Path:
    """A built-in profile name (agg, disagg) or a path to a YAML file."""
    path = Path(profile)
    if path.suffix in (".yaml", ".yml") or os.sep in profile:
        if not path.is_file():
            raise ConfigError(f"profile file '{profile}' does not exist", hint="check the path")
        return path
    builtin = profiles_dir() / f"{profile}.yaml"
    if builtin.is_file():
        return builtin
    names = ", ".join(builtin_profiles()) or "none found"
    raise ConfigError(
        f"unknown profile '{profile}'", hint=f"use a built-in profile ({names}) or a path to a .yaml file"
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})", hint="fix the YAML syntax") from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a profile must be a mapping of keys to values")
    return underscored(data)


def _annotation(dotted: str) -> Any:
    """The type of a dotted key of DynamoConfig, or None for no such key."""
    model: Any = DynamoConfig
    for key in dotted.split("."):
        fields = getattr(model, "model_fields", None)
        if not fields or key not in fields:
            return None
        model = fields[key].annotation
    return model


def _text_field(dotted: str) -> tuple[bool, bool]:
    """(is the key a text field, may it be null) for a dotted path into DynamoConfig."""
    annotation = _annotation(dotted)
    if annotation is None or typing.get_origin(annotation) in (list, dict):
        return False, False
    args = typing.get_args(annotation)
    kinds = [a for a in args if a is not type(None)] if args else [annotation]
    textual = all(k is str or typing.get_origin(k) is typing.Literal for k in kinds)
    return textual, type(None) in args


def _parse_value(text: str, dotted: str) -> Any:
    """'--set a.b=3' gives 3, 'true' gives True, '[1,2]' a list (YAML's reading of the value), except
    for text keys, which keep the text as typed (--set workers.gpus=0 is the string '0')."""
    textual, nullable = _text_field(dotted)
    if textual:
        return None if nullable and text in ("null", "~", "") else text
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        value = text
    # One item for a list key: --set frontend.api_keys=env:KEYS
    if typing.get_origin(_annotation(dotted)) is list and isinstance(value, str):
        return [value] if value else []
    return value


def set_path(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    keys = underscored(dotted).split(".")
    if not all(keys):
        raise ConfigError(f"{source}: '{dotted}' is not a key path", hint="use dotted keys like router.mode")
    node = tree
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: '{dotted}': '{k}' is a value, not a section")
        node = child
    node[keys[-1]] = value


def parse_set(items: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set '{item}' is not key=value", hint="e.g. --set router.mode=random")
        key = underscored(key.strip())
        out.append((key, _parse_value(raw, key)))
    return out


def env_overrides(environ: Mapping[str, str]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for name, key in ENV_KEYS.items():
        if environ.get(name):
            out.append((key, environ[name]))
    for name, raw in sorted(environ.items()):
        if name.startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
            key = ".".join(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
            out.append((key, _parse_value(raw, key)))
    return out


def _format_error(err: ValidationError, source: str) -> ConfigError:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{path}: {msg}")
    first = lines[0]
    more = f" (and {len(lines) - 1} more: {'; '.join(lines[1:])})" if len(lines) > 1 else ""
    return ConfigError(
        f"{source}: {first}{more}",
        hint="see `dynamo config show` for the keys and their defaults",
    )


def load_config(
    profile: str | None = None,
    *,
    sets: list[str] | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> DynamoConfig:
    """Resolve a profile into a validated config, applying every source in precedence order.

    ``flags`` maps dotted key paths to values from explicit command-line flags (None = not given).
    """
    environ = os.environ if environ is None else environ
    tree: dict[str, Any] = {}
    source = "defaults"
    if profile is not None:
        path = resolve_profile_path(profile)
        tree = _read_yaml(path)
        source = str(path)
        try:  # validate the file alone first, so its own mistakes name the file
            DynamoConfig.model_validate(tree)
        except ValidationError as e:
            raise _format_error(e, source) from None
    layers = [
        ("environment", env_overrides(environ)),
        ("--set", parse_set(sets or [])),
        ("flags", [(k, v) for k, v in (flags or {}).items() if v is not None]),
    ]
    for layer_name, items in layers:
        if not items:
            continue
        for key, value in items:
            set_path(tree, key, value, layer_name)
        try:
            DynamoConfig.model_validate(tree)
        except ValidationError as e:
            raise _format_error(e, f"{source} + {layer_name}") from None
    return DynamoConfig.model_validate(tree)


def shown_config(cfg: DynamoConfig) -> dict[str, Any]:
    """The config as it may be shown or written to a file: API keys written out are redacted."""
    data = cfg.model_dump(mode="json")
    data["frontend"]["api_keys"] = redacted(cfg.frontend.api_keys)
    return data


def dump_config(cfg: DynamoConfig) -> str:
    return yaml.safe_dump(shown_config(cfg), sort_keys=False)
