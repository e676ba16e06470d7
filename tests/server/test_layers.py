"""The server's layers, as docs/server-core.md ("Who may import whom") describes
them, kept by a test (an import-linter contract written as code: imports inside functions count,
``if TYPE_CHECKING:`` blocks do not).

Bottom up: ``errors``/``settings``; ``db`` (tables, engine); ``orchestration`` (every state write,
on ``db`` rows); ``repositories`` (the SQL); ``services`` (the background loops and what the routes
ask for); ``workflows`` (the workflow engine, the checks of a definition, its expressions: it uses
the task service); ``api`` (routes and their helpers); ``context``/``app``/``cli`` (the composition
root).
A layer imports only layers below it. Which top-level package may import which (``schemas``
nothing of ours, ``client`` and ``evaluation_container`` never the server) is
tests/test_packaging.py's test.

No exception: ``KNOWN`` is empty (an upload's HTTP side is ``api/uploads.py``, its service
``services/uploads.py``). A new exception fails the test; one listed there must exist."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import phpo.server

ROOT = Path(phpo.server.__file__).parent

# part -> the server parts it may import (besides itself)
BASE = {"errors", "settings"}
ALLOWED = {
    "errors": set(),
    "settings": set(),
    "db": {"settings"},
    "auth": {"db", "errors"},
    "orchestration": {"db", "errors"},
    "repositories": {"db", "auth", "errors", "orchestration"},
    "services": BASE | {"db", "auth", "orchestration", "repositories"},
    "workflows": BASE | {"db", "auth", "orchestration", "repositories", "services"},
    "ui": BASE | {"db", "repositories"},  # plots drawn from the stored points
    "api": BASE | {"auth", "repositories", "services", "workflows", "context", "ui"},
    "context": BASE | {"db", "services", "workflows"},
    "app": BASE | {"db", "auth", "repositories", "services", "workflows", "api", "context"},
    "cli": BASE | {"db", "repositories", "app"},
    "__main__": {"cli"},
}
WEB = ("fastapi", "starlette", "uvicorn")  # only api/ and the composition root speak HTTP
WEB_FREE = ("db", "orchestration", "repositories", "services", "workflows", "auth")
KNOWN: set[str] = set()


def _part(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py") if rel.parts[0] != "__init__.py" else "__init__"


def _imports(path: Path, read=None) -> list[str]:
    """Absolute names of what ``path`` imports (its text: ``read(path)``), relative imports resolved."""
    tree = ast.parse(read(path) if read else path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                skip.update(id(n) for n in ast.walk(sub))
    rel = path.relative_to(ROOT).with_suffix("")
    pkg = ["phpo", "server", *rel.parts[:-1]]
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
                out += [f"{mod}.{a.name}" for a in node.names] if not node.module else [mod]
            elif node.module:
                out.append(node.module)
    return out


FILES = sorted(p for p in ROOT.rglob("*.py") if "migrations" not in p.parts and p != ROOT / "__init__.py")


def _violations(files: list[Path], read=None) -> list[str]:
    bad = []
    for path in files:
        part = _part(path)
        for name in _imports(path, read):
            if name.startswith("phpo.server."):
                target = name.split(".")[2]
                if target != part and target not in ALLOWED[part]:
                    bad.append(f"{path.relative_to(ROOT)}: {part} imports {name}")
            elif part in WEB_FREE and name.split(".")[0] in WEB:
                bad.append(f"{path.relative_to(ROOT)}: {part} imports {name}")
    return bad


def test_each_layer_imports_only_the_layers_below():
    assert sorted(set(_violations(FILES)) - KNOWN) == []
    assert set(_violations(FILES)) >= KNOWN, "an exception in KNOWN is gone: take it off the list"


def test_routes_reach_tables_through_repositories_and_services():
    """A route reads and writes through a repository or a service, never a table itself."""
    bad = [
        f"{p.relative_to(ROOT)}: {n}"
        for p in (ROOT / "api").rglob("*.py")
        for n in _imports(p)
        if n.startswith(("phpo.server.db", "sqlalchemy"))
    ]
    assert bad == []


@pytest.mark.parametrize(
    "line, part",
    [
        ("from ..api.deps import caller", "services"),
        ("from ..services.tasks import TaskService", "repositories"),
        ("from fastapi import Request", "services"),
        ("from ..api.deps import caller", "workflows"),
        ("from ..workflows.engine import WorkflowEngine", "services"),
        ("from fastapi import Request", "workflows"),
    ],
)
def test_the_check_sees_a_violation(line, part):
    """The layer test can fail: a module of ``part`` holding ``line`` is reported."""
    probe = ROOT / part / "_layer_probe.py"
    assert _violations([probe], read=lambda _p: line + "\n") == [
        f"{part}/_layer_probe.py: {part} imports "
        + line.split()[1].replace("..", "phpo.server.").replace("fastapi", "fastapi")
    ]


def _statements(path: Path, read=None) -> list[str]:
    """What in ``path`` builds or runs SQL itself: a SQLAlchemy import other than the ``Session``
    type, or a call of a session's (``s``, ``session``, ``self.s``) ``execute``/``add``/``get``..."""
    tree = ast.parse(read(path) if read else path.read_text())
    out = [
        f"imports {n}"
        for n in _imports(path, read)
        if n.split(".")[0] == "sqlalchemy" and n != "sqlalchemy.orm"
    ]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "sqlalchemy.orm":
            out += [f"imports sqlalchemy.orm.{a.name}" for a in node.names if a.name != "Session"]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            on = node.func.value
            session = (isinstance(on, ast.Name) and on.id in ("s", "session")) or (
                isinstance(on, ast.Attribute) and on.attr in ("s", "session")
            )
            if session and node.func.attr in (
                "execute",
                "add",
                "add_all",
                "get",
                "scalars",
                "scalar",
                "delete",
                "merge",
            ):
                out.append(f"line {node.lineno}: {ast.unparse(on)}.{node.func.attr}(...)")
    return out


def test_the_workflows_package_leaves_the_sql_to_the_repository():
    """The workflow engine, its checks and expressions reach the database only through
    ``repositories/workflows.py`` (and the other repositories): no statement of their own."""
    bad = [
        f"{p.relative_to(ROOT)}: {what}"
        for p in sorted((ROOT / "workflows").rglob("*.py"))
        for what in _statements(p)
    ]
    assert bad == []


@pytest.mark.parametrize(
    "line",
    [
        "from sqlalchemy import select",
        "wf = s.get(WorkflowRow, 1)",
        "s.execute(text('select 1'))",
        "self.s.add(row)",
        "session.delete(row)",
    ],
)
def test_the_sql_check_sees_a_statement(line):
    """The SQL check can fail: each of these lines is reported (a set's ``add`` is not)."""
    assert _statements(ROOT / "workflows" / "_sql_probe.py", read=lambda _p: "seen.add(1)\n") == []
    probe = ROOT / "workflows" / "_sql_probe.py"
    assert len(_statements(probe, read=lambda _p: line + "\n")) == 1
