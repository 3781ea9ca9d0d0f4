"""The package's layout keeps its promises (docs/architecture.md, each room's ``__init__``):
imports point down between rooms, no import cycle, no module over 400 lines.

Read from the source with ``ast``: every import counts, a lazy one inside a function too.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"midi_bridge": REPO / "bridge", "midi_bridge.generators": REPO / "plugins"}
MAX_LINES = 400

#: room -> the rooms it may import (its own always allowed).  "plugin" is the contract.
ALLOWED = {
    "plugin": set(),
    "core": {"plugin"},
    "runtime": {"core", "plugin"},
    "stage": {"runtime", "core", "plugin"},
    "commands": {"stage", "runtime", "core", "plugin", "bench", "training", "model", "package"},
    "bench": {"commands", "stage", "runtime", "core", "plugin", "model", "package"},
    "model": {"plugin"},
    "training": {"model", "plugin", "stage"},
    "generators": {"plugin", "model"},
    "package": set(),  # midi_bridge/__init__.py
    "__main__": {"commands"},  # python -m midi_bridge
}


def modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package."""
    found: dict[str, Path] = {}
    for pkg, folder in FOLDERS.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("").parts
            if pkg == "midi_bridge" and rel and rel[0] == "generators":
                continue
            parts = list(rel[:-1]) if rel[-1] == "__init__" else list(rel)
            found[".".join([pkg, *parts])] = path
    return found


def room(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "package"
    return parts[1]


def imports(module: str, path: Path, top_level_only: bool = False) -> set[str]:
    """The package modules ``module`` imports (resolved, absolute)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # module level, including inside if/try blocks
        nodes = [n for stmt in tree.body for n in ast.walk(stmt)
                 if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "midi_bridge")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "midi_bridge":
                continue
            out.add(target)
            out.update(f"{target}.{a.name}" for a in node.names)
    known = modules()
    return {m for m in out if m in known and m != module}


def test_every_room_imports_only_what_its_init_allows():
    bad = []
    for module, path in modules().items():
        mine = room(module)
        for target in imports(module, path):
            other = room(target)
            if other != mine and other not in ALLOWED[mine]:
                bad.append(f"{module} ({mine}) imports {target} ({other})")
    assert not bad, "imports that point up or sideways:\n" + "\n".join(sorted(bad))


def test_nothing_imports_the_old_top_level_names():
    """``bridge`` and ``plugins`` are folders of the repository, not import names."""
    bad = []
    for module, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and not node.level else [])
            bad += [f"{module}: {n}" for n in names if n and n.split(".")[0] in ("bridge", "plugins")]
    assert not bad, "\n".join(bad)


def test_no_generator_imports_another_generator():
    gens = {m: p for m, p in modules().items() if m.startswith("midi_bridge.generators.")}
    bad = [f"{m} imports {t}" for m, p in gens.items() for t in imports(m, p) if t in gens]
    assert not bad, "\n".join(bad)


def test_no_import_cycle_at_module_level():
    mods = modules()
    graph = {m: imports(m, p, top_level_only=True) for m, p in mods.items()}
    # a package's __init__ importing its own modules is not a cycle worth refusing
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_module_over_400_lines():
    long = {str(p.relative_to(REPO)): n for p in modules().values()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_layout_checks_can_fail():
    """The resolver sees relative and lazy imports (a check that sees nothing passes always)."""
    engine = modules()["midi_bridge.core.engine"]
    assert "midi_bridge.plugin" in imports("midi_bridge.core.engine", engine)
    cli = modules()["midi_bridge.commands.cli"]
    assert "midi_bridge.training.cli" in imports("midi_bridge.commands.cli", cli)  # lazy, in a function
