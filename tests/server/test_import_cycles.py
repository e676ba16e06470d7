"""No import cycles among phpo's modules, counting imports inside functions too (a local
import that hides a cycle is still a cycle). Imports under ``if TYPE_CHECKING:`` are left out:
they never run."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import phpo.client
import phpo.evaluation_container
import phpo.schemas
import phpo.server
import phpo.steering

PACKAGES = [phpo.schemas, phpo.steering, phpo.server, phpo.evaluation_container, phpo.client]


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        root = Path(pkg.__file__).parent
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([pkg.__name__, *parts])] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                skip.update(id(n) for n in ast.walk(sub))
    return skip


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = importlib.util.resolve_name(
                    "." * node.level + base, name if is_pkg else name.rpartition(".")[0]
                )
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # phpo.server.db.tables.TaskRow -> phpo.server.db.tables
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):  # a package's own __init__ is not a cycle
                found.add(t)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state:
                got = visit(m)
                if got:
                    return got
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            got = visit(n)
            if got:
                return got
    return None


def test_find_cycle_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_a_local_import_counts(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from phpo.x import y\n")
    assert imports_of("phpo.m", f, {"phpo.m", "phpo.x"}) == {"phpo.x"}


def test_no_import_cycles_among_phpo_modules():
    mods = _modules()
    known = set(mods)
    graph = {name: imports_of(name, path, known) for name, path in mods.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
