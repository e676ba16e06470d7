"""Helpers of the workflow tests: a user's client, the payload scripts, definitions, waiting."""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from phpo.client import Client
from phpo.schemas.workflows import Workflow, WorkflowNodeRecord

PY = sys.executable
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "workflows"

# One script for every job of the tests: it echoes its inputs as outputs, and can sleep or fail.
JOB = textwrap.dedent("""
    import json, sys, time
    p = json.load(open("input.json"))
    time.sleep(float(p.get("sleep", 0)))
    if p.get("fail"):
        print("failing on purpose", file=sys.stderr)
        sys.exit(3)
    out = {k: v for k, v in p.items() if k not in ("sleep", "fail")}
    if "value" in p:
        out["double"] = 2 * p["value"]
    json.dump({"status": 0, "loss": float(p.get("value", 0) or 0), "metrics": out}, open("output.json", "w"))
""")
# An HPO payload: loss (x - 2)^2, optionally slow.
QUAD = textwrap.dedent("""
    import json, time
    p = json.load(open("input.json"))
    time.sleep(float(p.get("sleep", 0)))
    json.dump({"status": 0, "loss": (p["x"] - 2) ** 2}, open("output.json", "w"))
""")


def write_payloads(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job.py").write_text(JOB)
    (folder / "quad.py").write_text(QUAD)
    return folder


def job(name: str, **kw: Any) -> dict[str, Any]:
    """A job node running job.py; ``inputs`` default to {}."""
    return {"name": name, "kind": "job", "exec": f"{PY} job.py", **kw}


def hpo(name: str, max_points: int = 3, sleep: float = 0, **kw: Any) -> dict[str, Any]:
    """An HPO node over x in 0..4 (grid), running quad.py."""
    space: dict[str, Any] = {"x": {"type": "int", "low": 0, "high": 4}}
    if sleep:
        space["sleep"] = {"type": "fixed", "value": sleep}
    return {
        "name": name,
        "kind": "hpo",
        "spec": {
            "evaluationExec": f"{PY} quad.py",
            "optimizer": "grid",
            "searchSpace": space,
            "maxPoints": max_points,
            "nParallelEvaluation": 2,
        },
        **kw,
    }


@dataclass
class User:
    server: Any
    token: str

    def client(self) -> Client:
        return Client(self.server.url, self.token)

    def http(self) -> httpx.Client:
        return self.server.client(self.token)

    @property
    def env(self) -> dict[str, str]:
        return {"PHPO_URL": self.server.url, "PHPO_TOKEN": self.token}

    def submit(self, definition: dict[str, Any], payloads: Path | None = None, **params: Any) -> Workflow:
        with self.client() as c:
            return c.submit_workflow(definition, params, sandbox=payloads if payloads else False)

    def get(self, wid: int) -> Workflow:
        with self.client() as c:
            return c.workflow(wid)

    def wait(self, wid: int, timeout: float = 60, agent_log: Path | None = None) -> Workflow:
        with self.client() as c:
            try:
                return c.wait_workflow(wid, progress=False, poll=0.2, timeout=timeout)
            except TimeoutError as e:
                raise AssertionError(f"{e}\n{diagnose(self, wid, agent_log)}") from None


def diagnose(user: User, wid: int, agent_log: Path | None = None) -> str:
    wf = user.get(wid)
    lines = [f"workflow {wf.id}: {wf.state.value} {wf.message}"]
    lines += [f"  {n.path}: {n.state.value} task={n.task_id} {n.message or ''}" for n in walk(wf.nodes)]
    if agent_log is not None and agent_log.exists():
        lines.append("--- agent log ---\n" + agent_log.read_text()[-4000:])
    lines.append("--- server log ---\n" + user.server.log()[-4000:])
    return "\n".join(lines)


def walk(nodes: list[WorkflowNodeRecord]):
    for n in nodes:
        yield n
        yield from walk(n.children)


def by_path(wf: Workflow) -> dict[str, WorkflowNodeRecord]:
    return {n.path: n for n in walk(wf.nodes)}


def tasks_of(user: User) -> list[dict[str, Any]]:
    with user.http() as h:
        r = h.get("/tasks", params={"limit": 1000})
        assert r.status_code == 200, r.text
        return r.json()["items"]
