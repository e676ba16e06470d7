"""Repositories hold the SQL: no module under ``server/services/`` builds a SQL statement
(SQLAlchemy's ``select``, ``update``, ``insert``, ``delete`` or ``text``, from whichever
SQLAlchemy module, under whatever alias); it calls a function of ``server/repositories/``.
The ORM session's own calls (``s.get``, ``s.add``, ``s.flush``) stay where the rows are used,
and state writes are :mod:`phpo.server.orchestration`'s (tests/server/test_state_owner.py).

``ALLOWED`` lists the modules whose SQL is still being moved; one that issues none any more
fails the test, so it comes off the list."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import phpo.server

SERVICES = Path(phpo.server.__file__).parent / "services"
STATEMENTS = {"select", "update", "insert", "delete", "text"}
# none left: the HPO manager's (services/hpo/), the workflow engine's (server/workflows/, kept
# free of SQL by test_layers.py) and the pruning decider's SQL went to server/repositories/ too
ALLOWED: set[str] = set()


def sql_statements(source: str) -> list[tuple[int, str]]:
    """(line, what) of each SQLAlchemy statement ``source`` builds (or imports to build)."""
    tree = ast.parse(source)
    names: dict[str, str] = {}  # local name -> SQLAlchemy constructor
    modules: set[str] = set()  # local names of SQLAlchemy modules
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sqlalchemy":
            for a in node.names:
                if a.name in STATEMENTS:
                    names[a.asname or a.name] = a.name
                    found.append((node.lineno, f"imports {node.module}.{a.name}"))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "sqlalchemy":
                    modules.add((a.asname or a.name).split(".")[0])
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name) and f.id in names:
            found.append((node.lineno, f"{names[f.id]}(...)"))
        elif isinstance(f, ast.Attribute) and f.attr in STATEMENTS:
            root = f.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in modules:
                found.append((node.lineno, f"{ast.unparse(f)}(...)"))
    return sorted(found)


FILES = sorted(SERVICES.rglob("*.py"))


def test_services_issue_no_sql_of_their_own():
    bad = [
        f"{p.relative_to(SERVICES)}:{line}: {what}"
        for p in FILES
        if p.name not in ALLOWED
        for line, what in sql_statements(p.read_text())
    ]
    assert bad == [], "move these statements into a function of server/repositories/"


def test_each_allowed_module_still_issues_sql():
    clean = sorted(name for name in ALLOWED if not sql_statements((SERVICES / name).read_text()))
    assert clean == [], "these modules issue no SQL any more: take them off ALLOWED"


@pytest.mark.parametrize(
    "source, expected",
    [
        (
            "from sqlalchemy import select\nrows = s.execute(select(T))\n",
            [(1, "imports sqlalchemy.select"), (2, "select(...)")],
        ),
        (
            "from sqlalchemy import update as u\ns.execute(u(T).values(n=1))\n",
            [(1, "imports sqlalchemy.update"), (2, "update(...)")],
        ),
        (
            "from sqlalchemy.dialects.postgresql import insert\n",
            [(1, "imports sqlalchemy.dialects.postgresql.insert")],
        ),
        ("import sqlalchemy as sa\ns.execute(sa.delete(T))\n", [(2, "sa.delete(...)")]),
        (
            "import sqlalchemy\ns.execute(sqlalchemy.sql.text('SELECT 1'))\n",
            [(2, "sqlalchemy.sql.text(...)")],
        ),
    ],
)
def test_the_scan_sees_a_statement(source, expected):
    assert sql_statements(source) == expected


@pytest.mark.parametrize(
    "source",
    [
        "h.update(chunk)\n",  # a hash, a dict, a set: not SQL
        "self.store.delete(rel)\n",
        "def select(parts):\n    return parts\nselect(('a',))\n",
        "from sqlalchemy.orm import Session\ns.get(Row, 1)\n",
    ],
)
def test_the_scan_leaves_what_is_not_sql(source):
    assert sql_statements(source) == []
