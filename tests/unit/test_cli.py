"""The `dynamo` command line through app.main(): exit codes, one-line errors with hints, output on the
right stream, and no heavy imports for --help."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from dynamo_cli import __version__
from dynamo_cli.app import main
from dynamo_cli.config.loader import load_config

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands read os.environ; make sure the caller's environment cannot change the results."""
    import os

    for name in list(os.environ):
        if name.startswith("DYNAMO") or name in ("ETCD_ENDPOINTS", "NATS_SERVER"):
            monkeypatch.delenv(name)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    code = e.value.code
    return (0 if code is None else int(code)), out, ANSI.sub("", err)  # in case FORCE_COLOR is set


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


# ---- config show / profiles -----------------------------------------------------------------------


def test_config_show_prints_the_resolved_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["config", "show", "agg"], capsys)
    assert code == 0, err
    shown = yaml.safe_load(out)
    assert shown == load_config("agg", environ={}).model_dump(mode="json")
    # keys the profile does not set are shown with their defaults
    assert shown["frontend"]["request_timeout_s"] == 600.0
    assert shown["workers"]["count"] == 2
    assert err == ""


def test_config_show_applies_set_and_flags(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(
        [
            "config",
            "show",
            "agg",
            "--set",
            "router.mode=random",
            "-s",
            "frontend.port=9001",
            "--engine",
            "vllm",
        ],
        capsys,
    )
    assert code == 0
    shown = yaml.safe_load(out)
    assert shown["router"]["mode"] == "random"
    assert shown["frontend"]["port"] == 9001
    assert shown["engine"] == "vllm"


def test_config_show_reads_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DYNAMO__ROUTER__MODE", "random")
    monkeypatch.setenv("ETCD_ENDPOINTS", "http://etcd.example:2379")
    code, out, _ = run_cli(["config", "show", "agg"], capsys)
    assert code == 0
    shown = yaml.safe_load(out)
    assert shown["router"]["mode"] == "random"
    assert shown["infra"]["etcd"] == "http://etcd.example:2379"


def test_config_show_json_parses(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["config", "show", "disagg", "--json"], capsys)
    assert code == 0
    data = json.loads(out)
    parsers = data.pop("parsers_in_force")
    assert data == load_config("disagg", environ={}).model_dump(mode="json")
    assert parsers.startswith("tool calls: ")


def test_config_show_names_the_parsers_in_force(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["config", "show", "agg", "--set", "frontend.reasoning_parser=qwen3"], capsys)
    assert code == 0
    # The embedded SmolLM2's template ignores tools: hermes, with the tools in the system prompt.
    assert "# parsers in force: tool calls: hermes (the chat template ignores tools" in out
    assert "reasoning: qwen3" in out


def test_config_show_bad_set_value_exits_2_with_one_error_and_a_hint(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_cli(["config", "show", "agg", "--set", "router.mode=bogus"], capsys)
    assert code == 2
    assert out == ""  # nothing on stdout: no half-printed config
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert "router.mode" in lines[0]
    assert any(line.startswith("hint:") for line in err.splitlines())
    assert "Traceback" not in err


def test_config_show_unknown_profile_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["config", "show", "nope"], capsys)
    assert code == 2
    assert out == ""
    assert len(error_lines(err)) == 1
    assert "nope" in err
    hint = [line for line in err.splitlines() if line.startswith("hint:")]
    assert hint and "agg" in hint[0] and "disagg" in hint[0]


def test_config_show_file_error_names_the_file_and_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("router:\n  mode: random\n  colour: blue\n")
    code, _, err = run_cli(["config", "show", str(path)], capsys)
    assert code == 2
    assert str(path) in err.replace("\n", "")
    assert "router.colour: unknown key" in err


def test_config_show_bad_set_format_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["config", "show", "agg", "--set", "router.mode"], capsys)
    assert code == 2
    assert "not key=value" in err


def test_config_profiles_lists_agg_and_disagg(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["config", "profiles"], capsys)
    assert code == 0
    rows = dict(line.split("\t", 1) for line in out.splitlines())
    assert {"agg", "disagg"} <= set(rows)
    for name in ("agg", "disagg"):
        assert Path(rows[name]).is_file()
        assert Path(rows[name]).name == f"{name}.yaml"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0
    assert out.strip() == f"dynamo-cli {__version__}"


@pytest.mark.parametrize(
    ("argv", "mentions"),
    [
        (["frobnicate"], "frobnicate"),
        (["config", "show", "agg", "--no-such-option"], "--no-such-option"),
        (["run"], "profile"),
        (["run", "agg", "--port", "abc"], "--port"),
    ],
    ids=["unknown-command", "unknown-option", "missing-argument", "bad-int"],
)
def test_command_line_usage_errors_exit_2_without_a_traceback(
    capsys: pytest.CaptureFixture[str], argv: list[str], mentions: str
) -> None:
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    assert mentions.lower() in err.lower()
    assert "Traceback" not in err


# ---- run --------------------------------------------------------------------------------------------


@pytest.fixture
def no_deployment(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Replace the deployment so that reaching it is recorded instead of starting processes (and keep
    `run` from reconfiguring the root logger under pytest)."""
    from dynamo_cli import lifecycle
    from dynamo_cli.deployment import launcher

    calls: list[object] = []

    def fake_run_deployment(cfg: object, *args: object, **kwargs: object) -> int:
        calls.append(cfg)
        return 0

    monkeypatch.setattr(launcher, "run_deployment", fake_run_deployment)
    monkeypatch.setattr(lifecycle, "configure_logging", lambda *a, **k: None)
    return calls


def test_run_with_a_bad_profile_key_exits_2_before_starting_anything(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, no_deployment: list[object]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("workers:\n  count: 2\n  cuont: 3\n")
    code, _, err = run_cli(["run", str(path)], capsys)
    assert code == 2
    assert no_deployment == []
    assert len(error_lines(err)) == 1
    assert "workers.cuont: unknown key" in err


def test_run_with_a_bad_flag_value_exits_2_before_starting_anything(
    capsys: pytest.CaptureFixture[str], no_deployment: list[object]
) -> None:
    code, _, err = run_cli(["run", "agg", "--router-mode", "sideways"], capsys)
    assert code == 2
    assert no_deployment == []
    assert "router.mode" in err


def test_run_passes_flags_to_the_deployment(
    capsys: pytest.CaptureFixture[str], no_deployment: list[object]
) -> None:
    code, _, _ = run_cli(
        ["run", "agg", "--workers", "4", "--port", "8081", "--router-mode", "random", "--speedup", "10"],
        capsys,
    )
    assert code == 0
    (cfg,) = no_deployment
    assert cfg.workers.count == 4  # type: ignore[attr-defined]
    assert cfg.frontend.port == 8081  # type: ignore[attr-defined]
    assert cfg.router.mode == "random"  # type: ignore[attr-defined]
    assert cfg.mocker.speedup_ratio == 10.0  # type: ignore[attr-defined]


# ---- error rendering ----------------------------------------------------------------------------------


@pytest.mark.parametrize("item", ["[red]oops", "[/]oops"])
def test_error_messages_are_printed_verbatim(capsys: pytest.CaptureFixture[str], item: str) -> None:
    try:
        code, _, err = run_cli(["config", "show", "agg", "--set", item], capsys)
    except Exception as e:  # a crash inside the error boundary is the bug, reported as a failure
        pytest.fail(f"main() raised {type(e).__name__}: {e}")
    assert code == 2
    assert item in err


# ---- imports --------------------------------------------------------------------------------------


def _commands() -> list[list[str]]:
    import typer

    from dynamo_cli.app import app

    found: list[list[str]] = []

    def walk(cmd: Any, path: list[str]) -> None:  # typer's own (vendored) click objects
        found.append(path)
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


@pytest.mark.parametrize("path", _commands(), ids=lambda p: " ".join(p) or "dynamo")
def test_every_help_is_readable_at_80_columns(path: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import typer
    from typer.testing import CliRunner

    from dynamo_cli.app import app

    monkeypatch.setenv("COLUMNS", "80")
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    out = ANSI.sub("", result.output)
    assert "…" not in out
    assert max(len(line) for line in out.splitlines()) <= 80
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]  # type: ignore[attr-defined]
    for param in cmd.params:
        if param.param_type_name == "option" and not getattr(param, "hidden", False):
            for flag in [*param.opts, *param.secondary_opts]:
                assert flag in out, f"{flag} is not shown whole"


def test_a_default_quoted_in_a_flags_help_is_the_configs() -> None:
    """A help text that names its key and quotes a default ("(frontend.port; default: 8000)") quotes the
    config model's own default; and the infra help quotes the ports `auto` looks at."""
    import re
    import typing

    from dynamo_cli.commands import options as o
    from dynamo_cli.config.models import DynamoConfig
    from dynamo_cli.transport.ports import DEFAULT_ETCD, DEFAULT_NATS

    defaults = DynamoConfig().model_dump(mode="json")
    quoted = 0
    for name in dir(o):
        for meta in getattr(getattr(o, name), "__metadata__", ()):
            found = re.search(r"\(([\w.]+); default: ([^)]+)\)", getattr(meta, "help", None) or "")
            if found:
                node: typing.Any = defaults
                for part in found[1].split("."):
                    node = node[part]
                assert str(node) == found[2], (name, found[1], node)
                quoted += 1
    assert quoted >= 2
    infra = DynamoConfig.model_fields["infra"].annotation.model_fields  # type: ignore[union-attr]
    assert DEFAULT_ETCD.split("//")[1] in (infra["etcd"].description or "")
    assert DEFAULT_NATS.split("//")[1] in (infra["nats"].description or "")
