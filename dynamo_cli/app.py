"""The `dynamo` command: wiring only, plus main() as the single error boundary."""

from __future__ import annotations

import sys

import typer

from dynamo_cli import __version__
from dynamo_cli.commands import bench, config_cmd, deploy, doctor, planner, role, run

app = typer.Typer(
    name="dynamo",
    help="Bring up a distributed LLM serving system with one command: OpenAI frontend, KV-aware router, "
    "prefill/decode workers, planner. Run `dynamo COMMAND --help` for examples.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)
app.command("run", help=run.HELP)(run.run)
app.command("role", help=role.HELP)(role.role)
app.command("doctor", help=doctor.HELP)(doctor.doctor)
app.add_typer(config_cmd.app, name="config")
app.add_typer(bench.app, name="bench")
app.add_typer(deploy.app, name="deploy")
app.add_typer(planner.app, name="planner")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dynamo-cli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Root options."""


def main(argv: list[str] | None = None) -> None:
    from dynamo_cli.console import print_error
    from dynamo_cli.errors import DynamoError

    try:
        rv = app(args=argv, standalone_mode=False)
    except DynamoError as e:
        print_error(e.message, e.hint)
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.TyperException as e:  # usage errors: unknown option, missing argument, bad value
        show = getattr(e, "show", None)
        if show is not None:
            show()
        else:
            print_error(e.format_message(), None)
        sys.exit(getattr(e, "exit_code", 2))
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)
