"""Every module imports; the import graph has no cycle and points one way; no source file grows past ~500 lines;
the CLI lists every command."""

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import leapalign

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(m.name for m in pkgutil.walk_packages(leapalign.__path__, "leapalign."))


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    importlib.import_module(name)


def test_no_file_over_500_lines():
    too_long = [(str(p.relative_to(ROOT)), n) for p in sorted(ROOT.glob("[st]*/**/*.py"))
                if (n := len(p.read_text().splitlines())) > 500]
    assert not too_long, f"split these files: {too_long}"


def test_cli_lists_every_command(capsys):
    from leapalign.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    listed = capsys.readouterr().out
    commands = [m.name for m in pkgutil.iter_modules(importlib.import_module("leapalign.commands").__path__)]
    assert len(commands) >= 7
    for name in commands:
        assert f"\n    {name} " in listed, f"`leapalign --help` does not list {name}"


def import_graph() -> dict[str, set[str]]:
    """module -> the leapalign modules it imports, lazy (function-level) imports included."""
    graph = {}
    for name in MODULES:
        path = Path(importlib.import_module(name).__file__)
        is_package = path.name == "__init__.py"
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                if node.level:  # relative import
                    parts = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                    base = ".".join(parts + [node.module])
                deps.add(base)
                deps |= {f"{base}.{a.name}" for a in node.names}
        graph[name] = {d for d in deps if d in MODULES and d != name}
    return graph


def test_import_graph_has_no_cycle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node, path):
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


# Layers, lowest first: a module may import its own layer and lower ones, never a higher one.
LAYERS = [
    {"leapalign", "leapalign.types", "leapalign.flow", "leapalign.ema", "leapalign.reference"},
    {"leapalign.methods"},
    {"leapalign.adapters", "leapalign.rewards", "leapalign.shapes", "leapalign.geneval", "leapalign.modes"},
    {"leapalign.config", "leapalign.data", "leapalign.checkpoint", "leapalign.metrics_log", "leapalign.models",
     "leapalign.evaluate", "leapalign.resume_guard", "leapalign.outputs", "leapalign.fast_rollout"},
    {"leapalign.trainer", "leapalign.bench", "leapalign.demo"},
    {"leapalign.cli", "leapalign.cli_model", "leapalign.commands"},
]


def layer(module: str) -> int:
    parts = module.split(".")
    for depth in range(len(parts), 0, -1):  # the longest listed prefix decides
        prefix = ".".join(parts[:depth])
        for i, group in enumerate(LAYERS):
            if prefix in group:
                return i
    raise AssertionError(f"{module} is in no layer of tests/test_repo.py LAYERS; add it")


def test_nothing_imports_upward():
    upward = [(m, d) for m, deps in import_graph().items() for d in deps if layer(d) > layer(m)]
    assert not upward, f"modules importing a higher layer: {upward}"


def test_methods_and_flow_import_only_torch_and_types():
    graph = import_graph()
    for name in [m for m in MODULES if m.startswith("leapalign.methods")] + ["leapalign.flow"]:
        outside = {d for d in graph[name] if not d.startswith("leapalign.methods")} - {"leapalign.types", "leapalign.flow"}
        assert not outside, f"{name} imports {outside}"
