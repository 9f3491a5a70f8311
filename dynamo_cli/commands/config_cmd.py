"""`dynamo config show PROFILE`: the resolved configuration, after every source is applied."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from dynamo_cli.commands import options as o

if TYPE_CHECKING:
    from dynamo_cli.config.models import DynamoConfig

app = typer.Typer(help="Inspect profiles.", no_args_is_help=True)


@app.command("show", help=f"Print the resolved config of a profile.\n\n{o.PRECEDENCE_HELP}")
def show(
    profile: o.Profile = None,
    sets: o.Sets = None,
    model: o.Model = None,
    engine: o.Engine = None,
    namespace: o.Namespace = None,
    json_output: o.Json = False,
) -> None:
    from dynamo_cli.config.loader import dump_config, load_config, shown_config
    from dynamo_cli.console import emit_json

    cfg = load_config(
        profile, sets=sets, flags=o.profile_flags(model=model, engine=engine, namespace=namespace)
    )
    parsers = _parsers_in_force(cfg)
    if json_output:
        emit_json({**shown_config(cfg), "parsers_in_force": parsers})
    else:
        typer.echo(dump_config(cfg), nl=False)
        typer.echo(f"# parsers in force: {parsers}")


def _parsers_in_force(cfg: DynamoConfig) -> str:
    """frontend.tool_call_parser and reasoning_parser as the frontend will apply them to this model
    (auto resolved from its chat template). Only a model already on disk is looked at."""
    from pathlib import Path

    from dynamo_cli.frontend.prepare import ChatSetup
    from dynamo_cli.models.resolve import EMBEDDED_ALIASES, resolve_model
    from dynamo_cli.models.tokenizer import ModelTokenizer

    if cfg.model not in EMBEDDED_ALIASES and not Path(str(cfg.model)).expanduser().is_dir():
        return f"tool calls: {cfg.frontend.tool_call_parser} (resolved when the model is downloaded)"
    try:
        tok = ModelTokenizer(resolve_model(cfg.model).path, fast_encode=False)
    except Exception as e:  # a broken folder is reported by `dynamo run` / `dynamo doctor`
        return f"unknown: the model's tokenizer could not be read ({e})"
    return ChatSetup.resolve(cfg.frontend, tok).describe()


@app.command("profiles", help="List the built-in profiles.")
def profiles() -> None:
    from dynamo_cli.config.loader import builtin_profiles, profiles_dir

    for name in builtin_profiles():
        typer.echo(f"{name}\t{profiles_dir() / (name + '.yaml')}")
