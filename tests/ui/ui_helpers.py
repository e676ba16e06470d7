"""Helpers of the web view, plot and notebook tests: a real server, a real agent and real tasks.

Everything is a real process on 127.0.0.1: ``python -m phpo.server`` on SQLite and
``python -m phpo.evaluation_container`` running the payload below, which reports intermediate
values through the SDK (the learning curves) and a loss, or two losses for a multi-objective task.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from phpo.client import Client

PY = sys.executable

PAYLOAD = textwrap.dedent("""
    import json, os, time
    from phpo.evaluation_container import sdk
    p = json.load(open("input.json"))
    t0 = time.time()
    while p.get("hold") and os.path.exists(p["hold"]) and time.time() - t0 < 120:
        time.sleep(0.1)  # a test holds the points here until it removes the file
    loss = (p["x"] - 1) ** 2 + (p["y"] + 0.5) ** 2 + (0.3 if p["act"] == "tanh" else 0.0)
    for step in range(4):
        sdk.report_intermediate(step, loss * (4 - step) + 0.1)
    print(f"training with {p}: loss {loss:.4f}", flush=True)
    out = {"status": 0, "loss": [loss, abs(p["x"])] if p.get("two") else loss}
    json.dump(out, open("output.json", "w"))
""")

SPACE: dict[str, Any] = {
    "x": {"type": "float", "low": -2.0, "high": 3.0},
    "y": {"type": "float", "low": 0.01, "high": 10.0, "log": True},
    "act": {"type": "categorical", "choices": ["relu", "tanh"]},
}


def write_payload(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.py").write_text(PAYLOAD)
    return folder


def task_spec(max_points: int = 10, **over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "evaluationExec": f"{PY} train.py",
        "optimizer": "optuna.random",
        "searchSpace": SPACE,
        "maxPoints": max_points,
        "nParallelEvaluation": 3,
        "nPointsPerIteration": 3,
    }
    spec.update(over)
    return spec


def submit(url: str, token: str, payload_dir: Path, **spec: Any) -> int:
    with Client(url, token) as c:
        return c.submit(task_spec(**spec), directory=payload_dir).id


def wait_done(url: str, token: str, task_id: int, timeout: float = 180, diag=lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    with Client(url, token) as c:
        while time.monotonic() < deadline:
            t = c.task(task_id)
            if t.state.value in ("finished", "failed", "cancelled"):
                assert t.state.value == "finished", f"task {task_id} {t.state.value}: {t.message}\n{diag()}"
                return t
            time.sleep(0.3)
    raise AssertionError(f"task {task_id} did not end within {timeout} s\n{diag()}")


MULTI_SPACE: dict[str, Any] = {**SPACE, "two": {"type": "fixed", "value": True}}


def start_mlflow(root: Path, port: int) -> subprocess.Popen:
    """``mlflow server`` as a real process (its own session, so the fixture ends its workers too)."""
    log = open(root / "mlflow.log", "w")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(
        [
            PY,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"mlflow server exited {proc.returncode}:\n{(root / 'mlflow.log').read_text()[-3000:]}"
            )
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("mlflow server did not answer within 120 s")


def new_user(server: Any, name: str) -> str:
    """A user token, made through the admin API."""
    with server.client(server.admin_token) as h:
        r = h.post("/tokens", json={"name": name, "role": "user"})
        assert r.status_code in (200, 201), r.text
        return r.json()["token"]


@dataclass
class Stack:
    """A real server (SQLite) and a real agent, with finished tasks of every plot kind."""

    server: Any
    payloads: Path
    token: str  # alice's
    work: Path
    tasks: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, token: str | None = None) -> Client:
        return Client(self.url, token or self.token)

    def http(self, token: str | None = None) -> httpx.Client:
        return self.server.client(token or self.token)

    def diag(self) -> str:
        agent = self.work / "agent" / "agent.log"
        return (
            f"--- agent log ---\n{agent.read_text()[-4000:] if agent.exists() else ''}\n"
            f"--- server log ---\n{self.server.log()[-3000:]}"
        )

    def run_task(self, key: str, **spec: Any) -> int:
        tid = submit(self.url, self.token, self.payloads, **spec)
        wait_done(self.url, self.token, tid, diag=self.diag)
        self.tasks[key] = tid
        return tid


def finished_tasks(stack: Stack) -> Stack:
    """Three finished tasks: single objective (10 points), two objectives (8), two segments (4 each)."""
    stack.run_task("single", max_points=10)
    stack.run_task(
        "multi",
        max_points=8,
        searchSpace=MULTI_SPACE,
        directions=["minimize", "minimize"],
        optimizer="optuna.nsga2",
    )
    stack.run_task("segmented", max_points=4, segments=[{"name": "barrel"}, {"name": "endcap"}])
    return stack
