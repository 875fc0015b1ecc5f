"""The package's shape: one subpackage per pipeline phase, no import cycle, and a CLI that only declares
arguments and hands each subcommand to one `jobs` function."""
from __future__ import annotations

import ast
import importlib
import inspect
import sys
from pathlib import Path

import pytest

import editharm
from editharm.cli import build_parser

PACKAGE = Path(editharm.__file__).resolve().parent
SUBPACKAGES = {"core", "config", "sources", "data", "model", "editing", "evaluation", "results"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The editharm modules a file imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from editharm.x import y` imports the module editharm.x.y when y is one, else editharm.x
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        else:
            continue
        found.update(n for n in names if n in modules)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_cycle_finder_sees_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_inside_editharm():
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    assert _cycle(graph) is None


def test_every_module_lives_in_a_phase_subpackage():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == ["__init__.py", "cli.py"]
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == SUBPACKAGES


def test_cli_imports_only_the_standard_library():
    """No table building or checkpoint loop can hide in a module that imports none of the project's code."""
    tree = ast.parse((PACKAGE / "cli.py").read_text(encoding="utf-8"))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}


def _subcommands():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sorted(sub.choices.items())


@pytest.mark.parametrize("command, parser", _subcommands(), ids=[c for c, _ in _subcommands()])
def test_each_subcommand_runs_one_jobs_function_with_its_arguments(command, parser):
    job = parser.get_default("job")
    module, _, name = job.partition(":")
    assert module.startswith("editharm.") and module.endswith(".jobs") and module.split(".")[1] in SUBPACKAGES
    function = getattr(importlib.import_module(module), name)
    declared = {a.dest for a in parser._actions if a.dest != "help"}
    assert set(inspect.signature(function).parameters) == declared
