"""Orchestration owns every state write: no module of the server outside
``server/orchestration/`` assigns a state column (``.state``, ``.synced``, ``.finished``) or
writes one in an ``update(...).values(...)``. Creating a row in its first state (a
constructor's keyword) is not a transition and stays allowed."""

from __future__ import annotations

import ast
from pathlib import Path

import phpo.server

SERVER = Path(phpo.server.__file__).parent
STATE_COLUMNS = {"state", "synced", "finished"}


def _targets(node: ast.AST) -> list[ast.AST]:
    if isinstance(node, ast.Assign):
        out: list[ast.AST] = []
        for t in node.targets:
            out += list(t.elts) if isinstance(t, (ast.Tuple, ast.List)) else [t]
        return out
    if isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        return [node.target]
    return []


def state_writes(source: str) -> list[tuple[int, str]]:
    """(line, what) of every state write in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        for t in _targets(node):
            if isinstance(t, ast.Attribute) and t.attr in STATE_COLUMNS:
                found.append((node.lineno, f"assigns .{t.attr}"))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "values":
            for kw in node.keywords:
                if kw.arg in STATE_COLUMNS:
                    found.append((node.lineno, f".values({kw.arg}=...)"))
            for arg in node.args:  # .values({"state": ...})
                if isinstance(arg, ast.Dict):
                    for k in arg.keys:
                        if isinstance(k, ast.Constant) and k.value in STATE_COLUMNS:
                            found.append((node.lineno, f".values({{{k.value!r}: ...}})"))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "setattr"
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in STATE_COLUMNS
        ):
            found.append((node.lineno, f"setattr(..., {node.args[1].value!r})"))
    return found


def test_the_scan_finds_each_kind_of_write():
    src = """
row.state = "ready"
seg.finished = True
row.synced, row.updated_at = "done", now
s.execute(update(t).values(state="leased"))
s.execute(update(t).values({"synced": "open"}))
setattr(row, "state", "x")
row = Row(state="ready")  # creation: allowed
x = row.state  # a read: allowed
"""
    assert sorted(line for line, _ in state_writes(src)) == [2, 3, 4, 5, 6, 7]


def test_no_state_write_outside_orchestration():
    offenders = []
    for path in sorted(SERVER.rglob("*.py")):
        rel = path.relative_to(SERVER)
        if rel.parts[0] == "orchestration" or "migrations" in rel.parts:
            continue  # migrations rewrite old rows with SQL text, before any service runs
        offenders += [f"server/{rel}:{line}: {what}" for line, what in state_writes(path.read_text())]
    assert not offenders, (
        "state writes outside server/orchestration/ (use set_state / set_states):\n" + "\n".join(offenders)
    )
