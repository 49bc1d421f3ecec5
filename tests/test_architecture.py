"""The package's shape, as a contract: layers import downward only, one stage module per notebook,
nothing rebuilds an earlier stage behind a getter. No exception list."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "artsim_lib"
# io < config < core < models < measures < stages < plots, workflow < cli
LAYERS = {"io": 0, "config": 1, "core": 2, "models": 3, "measures": 4, "stages": 5, "plots": 6, "workflow": 6}
TOP = 7  # cli.py (the artsim and compare commands), __main__.py


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in LIB.rglob("*.py")}


def layer(mod: str) -> int:
    parts = mod.split(".")
    if len(parts) == 1:
        return -1  # the package itself (__version__)
    return LAYERS.get(parts[1], TOP)


def imports(mod: str) -> set[str]:
    """Every artsim_lib module ``mod`` imports, at module level or inside a function."""
    path = MODULES[mod]
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            subs = [f"{base}.{a.name}" for a in node.names]
            # `from pkg import module` uses the module; `from pkg import name` uses the package (its facade)
            names = subs + ([base] if any(x not in MODULES for x in subs) else [])
        found |= {n for n in names if n in MODULES and n != mod}
    return found


GRAPH = {m: imports(m) for m in MODULES}


def stage_number(mod: str) -> int | None:
    m = re.match(r"artsim_lib\.stages\.s(\d\d)_", mod)
    return int(m.group(1)) if m else None


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_imports_go_downward_only(mod):
    up = []
    for dep in sorted(GRAPH[mod]):
        if dep == "artsim_lib" or dep.startswith(mod + "."):
            continue
        if layer(dep) > layer(mod) or (layer(dep) == layer(mod) == 6 and dep.split(".")[1] != mod.split(".")[1]):
            up.append(dep)
        elif stage_number(mod) is not None and stage_number(dep) is not None and stage_number(dep) >= stage_number(mod):
            up.append(dep)  # a stage reads earlier stages only
    assert not up, f"{mod} imports upward: {up}"


def test_the_import_graph_has_no_cycle():
    state, cycle = {}, []

    def visit(m, stack):
        state[m] = 1
        for d in GRAPH[m]:  # a facade importing its own modules is an edge too: one back is a cycle
            if state.get(d) == 1:
                cycle.append(stack[stack.index(d) :] + [d] if d in stack else [m, d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])
    assert not cycle, f"import cycles: {cycle[:3]}"


def test_no_module_is_imported_by_a_string():
    found = [
        str(p.relative_to(ROOT)) for p in LIB.rglob("*.py") if re.search(r"import_module\(|__import__\(", p.read_text())
    ]
    assert not found, f"imports by name hide the graph: {found}"


def test_nothing_rebuilds_an_earlier_stage_behind_a_getter():
    getters = [
        f"{module_name(p)}.{node.name}"
        for p in LIB.rglob("*.py")
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.FunctionDef) and node.name.startswith("require_")
    ]
    assert not getters, f"getters that may run a stage: {getters}"


# What a stage's load() must never call: it reads artifacts, it does not make them.
# (A name ending in _meta, _path, _key, _dir, _info or _name only names what would be made.)
MAKERS = re.compile(
    r"^(?!.*_(meta|path|key|dir|info|name)$)"
    r"(run|train|fit|finetune|generate|build|ensure|preprocess|extract|make|encode|caption|score)(_|$)"
)


def _called_names(fn: ast.FunctionDef) -> set[str]:
    out = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Call):
            f = node.func
            out.add(f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", ""))
    return out


@pytest.mark.parametrize("path", sorted((LIB / "stages").glob("s[0-9][0-9]_*.py")), ids=lambda p: p.stem)
def test_a_stage_load_only_reads(path):
    """``load`` and the module functions it calls make nothing (no run, train, generate, build...)."""
    tree = ast.parse(path.read_text())
    defs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    seen, todo, makers = set(), ["load"], []
    while todo:  # load, and the functions of the same module it reaches
        name = todo.pop()
        if name in seen or name not in defs:
            continue
        seen.add(name)
        for called in _called_names(defs[name]):
            if MAKERS.match(called):
                makers.append(f"{name} -> {called}")
            todo.append(called)
    assert not makers, f"{path.stem}.load makes what it should only read: {makers}"


NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]-*.ipynb"))


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_has_one_stage_module_with_run_and_load_and_one_test_file(nb):
    nn = nb.name[:2]
    mods = sorted((LIB / "stages").glob(f"s{nn}_*.py"))
    assert len(mods) == 1, f"notebook {nb.name}: stage modules {mods}"
    tree = ast.parse(mods[0].read_text())
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert {"run", "load"} <= defined, f"{mods[0].name} lacks run/load: has {sorted(defined)[:8]}..."
    tests = sorted((ROOT / "tests" / "stages").glob(f"test_s{nn}_*.py"))
    assert len(tests) == 1, f"notebook {nb.name}: stage test files {tests}"
    assert mods[0].stem in nb.read_text(), f"{nb.name} does not import {mods[0].stem}"
