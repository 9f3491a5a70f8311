"""The package's layout rules (docs/architecture.md): imports flow one way, heavy engines stay in their
corner, modules stay small. Read from the source with ``ast``, imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "dynamo_cli"

# Lowest first. A module may import its own layer and the ones below, never one above.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "console", "lifecycle", "config", "tracing"),
    ("models", "transport", "kv"),
    ("engines",),
    ("routing", "disagg", "planner", "deploy"),
    ("frontend",),
    ("roles",),
    ("deployment",),
    ("doctor", "bench"),
    ("commands", "app", "__main__", "__init__"),
]
LEVEL = {part: level for level, parts in enumerate(LAYERS) for part in parts}

# vLLM, torch and NIXL: only the engines that run them, the KV transfer that moves their bytes, and the
# model conversion.
HEAVY = ("vllm", "torch", "nixl", "nixl_cu12")
HEAVY_ALLOWED = ("engines/vllm_", "kv/nixl_backend.py", "models/")

MAX_LINES = 400
# Over the limit today, to be split; none may grow, and a module that falls under the limit leaves.
TOO_LONG = {}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module imported, whether it is only for type checking) for every import in the file."""
    tree = ast.parse(path.read_text())
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) and not node.orelse:
            if not ast.unparse(node.test).startswith("not "):
                typing_only.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in typing_only) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # The module, and each name as a module of it (``from dynamo_cli.transport import protocol``);
            # names that are not modules are dropped where modules are looked up.
            found.append((node.module, id(node) in typing_only))
            found += [(f"{node.module}.{alias.name}", id(node) in typing_only) for alias in node.names]
    return found


def _top(module: str) -> str:
    """The layer part of a module name (``transport`` for ``transport.messaging``)."""
    return module.split(".")[0]


MODULES = _modules()
EDGES = {
    name: [(m.removeprefix("dynamo_cli."), t) for m, t in _imports(path) if m.startswith("dynamo_cli")]
    for name, path in MODULES.items()
}


def test_every_part_of_the_package_has_a_layer() -> None:
    assert {_top(name) for name in MODULES} <= set(LEVEL), set(map(_top, MODULES)) - set(LEVEL)


def test_no_import_goes_up_a_layer() -> None:
    upward = [
        f"{name} imports {target}"
        for name, targets in EDGES.items()
        for target, _ in targets
        if target and _top(target) in LEVEL and LEVEL[_top(target)] > LEVEL[_top(name)]
    ]
    assert not upward


def test_no_import_cycle_between_modules_or_parts() -> None:
    """Imports that run (not the type-checking ones) form no cycle, neither between modules nor between
    the parts of one layer (``planner`` and ``deploy``, say)."""

    def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
        found, state = [], dict.fromkeys(graph, 0)

        def visit(node: str, trail: list[str]) -> None:
            state[node] = 1
            for nxt in sorted(graph.get(node, ())):
                if state.get(nxt) == 1:
                    found.append([*trail[trail.index(nxt) :], nxt])
                elif state.get(nxt) == 0:
                    visit(nxt, [*trail, nxt])
            state[node] = 2

        for node in sorted(graph):
            if state[node] == 0:
                visit(node, [node])
        return found

    # A module's own packages (``engines.mocker`` for ``engines.mocker.engine``) are not its dependencies:
    # Python has begun them before it.
    modules = {
        n: {t for t, typing in EDGES[n] if not typing and t in MODULES and not f"{n}.".startswith(f"{t}.")}
        for n in MODULES
    }
    parts: dict[str, set[str]] = {}
    for name, targets in modules.items():
        parts.setdefault(_top(name), set()).update(_top(t) for t in targets if _top(t) != _top(name))
    assert not cycles(modules)
    assert not cycles(parts)


def test_heavy_libraries_stay_in_the_engines_and_kv_transfer() -> None:
    misplaced = [
        f"{path.relative_to(PACKAGE)} imports {module}"
        for name, path in MODULES.items()
        for module, _ in _imports(path)
        if module.split(".")[0] in HEAVY and not str(path.relative_to(PACKAGE)).startswith(HEAVY_ALLOWED)
    ]
    assert not misplaced


# Private names one module still takes from another, where the defining module may not be changed here:
# ("importing module", "defining module", "name"). Empty today; each entry names its reason.
PRIVATE_IMPORTS_ALLOWED: set[tuple[str, str, str]] = set()


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_uses(path: Path, own: str) -> list[tuple[str, str]]:
    """(module, name) for every private name ``path`` (module ``own``) takes from another dynamo_cli
    module: ``from dynamo_cli.x import _y`` (in functions too) and ``x._y`` on an imported module."""
    tree = ast.parse(path.read_text())
    found, bound = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if not node.module.startswith("dynamo_cli"):
                continue
            for alias in node.names:
                if f"{node.module}.{alias.name}".removeprefix("dynamo_cli.") in MODULES:
                    bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                if _private(alias.name) and node.module.removeprefix("dynamo_cli.") != own:
                    found.append((node.module, alias.name))
        elif isinstance(node, ast.Import):
            bound.update({a.asname or a.name: a.name for a in node.names if a.name.startswith("dynamo_cli")})
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            module = bound.get(ast.unparse(node.value))
            if module and module.removeprefix("dynamo_cli.") != own:
                found.append((module, node.attr))
    return found


def test_no_module_takes_a_private_name_from_another() -> None:
    """A name another module needs is public: ``from dynamo_cli.x import _y`` means ``_y`` is not private
    (rename it) or the importer reaches into what is not its business."""
    offenders = sorted(
        f"{name} takes {module}.{private}"
        for name, path in MODULES.items()
        for module, private in _private_uses(path, name)
        if (name, module.removeprefix("dynamo_cli."), private) not in PRIVATE_IMPORTS_ALLOWED
    )
    assert not offenders, "private names imported across modules:\n  " + "\n  ".join(offenders)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_short(name: str) -> None:
    path = MODULES[name]
    rel = str(path.relative_to(PACKAGE))
    lines = len(path.read_text().splitlines())
    limit = TOO_LONG.get(rel, MAX_LINES)
    assert lines <= limit, f"{rel}: {lines} lines (limit {limit}); split it"
    if rel in TOO_LONG:
        assert lines > MAX_LINES, f"{rel} is {lines} lines now: take it off TOO_LONG"


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The rules above read imports in functions and under TYPE_CHECKING; a check that saw none would
    pass on anything."""
    path = tmp_path / "mod.py"
    path.write_text(
        "from typing import TYPE_CHECKING\n"
        "from dynamo_cli.transport import protocol\n"
        "if TYPE_CHECKING:\n    from dynamo_cli.roles.base import Role\n"
        "def f():\n    from dynamo_cli.commands import run\n"
    )
    assert _imports(path) == [
        ("typing", False),
        ("typing.TYPE_CHECKING", False),
        ("dynamo_cli.transport", False),
        ("dynamo_cli.transport.protocol", False),
        ("dynamo_cli.roles.base", True),
        ("dynamo_cli.roles.base.Role", True),
        ("dynamo_cli.commands", False),
        ("dynamo_cli.commands.run", False),
    ]


def test_the_checker_sees_a_private_name_taken(tmp_path: Path) -> None:
    path = tmp_path / "mod.py"
    path.write_text(
        "import dynamo_cli.kv.region as region\n"
        "from dynamo_cli.frontend import schemas\n"
        "from dynamo_cli.errors import DynamoError, __all__\n"
        "def f():\n    from dynamo_cli.frontend.http_responses import _a\n"
        "    return region._b, schemas._c, schemas.d\n"
    )
    assert sorted(_private_uses(path, "mod")) == [
        ("dynamo_cli.frontend.http_responses", "_a"),
        ("dynamo_cli.frontend.schemas", "_c"),
        ("dynamo_cli.kv.region", "_b"),
    ]
