"""`dynamo config show PROFILE`: the resolved configuration, after every source is applied."""

from __future__ import annotations

import typer

from dynamo_cli.commands import options as o

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
    from dynamo_cli.config.loader import dump_config, load_config
    from dynamo_cli.console import emit_json

    cfg = load_config(profile, sets=sets, flags=o.common_flags(model, engine, namespace))
    if json_output:
        emit_json(cfg.model_dump(mode="json"))
    else:
        typer.echo(dump_config(cfg), nl=False)


@app.command("profiles", help="List the built-in profiles.")
def profiles() -> None:
    from dynamo_cli.config.loader import builtin_profiles, profiles_dir

    for name in builtin_profiles():
        typer.echo(f"{name}\t{profiles_dir() / (name + '.yaml')}")
