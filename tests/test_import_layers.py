"""The package's import graph, read from the source (every import: top level, inside
functions, under TYPE_CHECKING): no circle between modules, and no layer imports one above it
(block accounting and the scheduler below the data plane, the data plane below the profiler,
the profiler below the tensor-parallel ranks, all of them below the engine)."""

from __future__ import annotations

import ast
from pathlib import Path

import neo_async

ROOT = Path(neo_async.__file__).parent

# package (or top-level module) -> the packages it must never import, directly or not
_ABOVE_DATA_PLANE = {"profile", "parallel", "engine", "server", "sim", "bench", "async_engine", "llm"}
FORBIDDEN = {
    "kv": {"runner", "model", "sched", "kernels"} | _ABOVE_DATA_PLANE,
    "sched": {"runner", "model", "kernels", "platform"} | _ABOVE_DATA_PLANE,
    "platform": {"runner", "model", "sched", "kv"} | _ABOVE_DATA_PLANE,
    "model": {"runner", "sched", "kv"} | _ABOVE_DATA_PLANE,
    "kernels": {"runner"} | _ABOVE_DATA_PLANE,
    "runner": _ABOVE_DATA_PLANE,
    "profile": _ABOVE_DATA_PLANE - {"profile"},
    "parallel": _ABOVE_DATA_PLANE - {"profile", "parallel"},
    "engine": {"server", "async_engine", "llm", "bench", "sim"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m == "neo_async" or m.startswith("neo_async.")}


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        # an import of a module's attribute names the module; a module's own packages are
        # initialised before it whatever it imports, so an import of one names nothing
        deps = {m if m in paths else m.rpartition(".")[0] for m in _imports(path, name)} & set(paths)
        graph[name] = {d for d in deps if not (name + ".").startswith(d + ".")}
    return graph


def _layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "neo_async"


def test_no_module_imports_a_layer_above_it():
    graph = _graph()
    bad = [
        f"{m} imports {d}" for m, deps in graph.items() for d in deps
        if _layer(d) in FORBIDDEN.get(_layer(m), set()) and _layer(d) != _layer(m)
    ]
    assert not bad, bad


def test_no_import_circle_between_modules():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                circles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not circles, circles


def test_the_checker_sees_a_circle_and_an_upward_import(tmp_path, monkeypatch):
    package = tmp_path / "neo_async"
    (package / "kv").mkdir(parents=True)
    (package / "runner").mkdir()
    (package / "__init__.py").write_text("")
    (package / "kv" / "__init__.py").write_text("")
    (package / "runner" / "__init__.py").write_text("")
    (package / "kv" / "pool.py").write_text("def f():\n    from neo_async.runner.copy import g\n")
    (package / "runner" / "copy.py").write_text("from neo_async.kv import pool\n")
    monkeypatch.setattr(f"{__name__}.ROOT", package)
    assert _graph()["neo_async.kv.pool"] == {"neo_async.runner.copy"}
    try:
        test_no_module_imports_a_layer_above_it()
    except AssertionError as e:
        assert "neo_async.kv.pool imports neo_async.runner.copy" in str(e)
    else:
        raise AssertionError("the upward import was not seen")
    try:
        test_no_import_circle_between_modules()
    except AssertionError as e:
        assert "neo_async.runner.copy" in str(e)
    else:
        raise AssertionError("the circle was not seen")
