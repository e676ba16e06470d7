"""Fixtures of the workflow tests: one real server and one real agent per test module.

Everything is a real process on 127.0.0.1: ``python -m phpo.server`` (SQLite unless a test asks
for PostgreSQL) and ``python -m phpo.evaluation_container`` running the payload scripts of
``examples/workflows`` and of the tests. Each test works as its own user (a fresh token), so
tests share a server without seeing each other's workflows.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import LiveServer, free_port

from .wf_helpers import User


def start_agent(server: LiveServer, work: Path, slots: int = 4) -> subprocess.Popen:
    log = open(work / "agent.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "phpo.evaluation_container",
            "--server",
            server.url,
            "--site",
            "local",
            "--slots",
            str(slots),
            "--workdir",
            str(work / "wd"),
            "--poll-interval",
            "0.2",
            "--name",
            f"wf-agent-{uuid.uuid4().hex[:6]}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "PHPO_TOKEN": server.agent_token},
    )


def stop_agent(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("wf-server")
    port = free_port()
    s = LiveServer(
        url=f"http://127.0.0.1:{port}",
        port=port,
        data_dir=d,
        database_url=None,
        args=["--manager-interval", "0.3", "--lease-seconds", "6"],
    )
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def agent(server, tmp_path_factory):
    work = tmp_path_factory.mktemp("wf-agent")
    proc = start_agent(server, work)
    yield work / "agent.log"
    stop_agent(proc)


def new_user(server: LiveServer, name: str | None = None) -> User:
    """A fresh user, made through the admin API (faster than a create-token process per test)."""
    with server.client(server.admin_token) as h:
        r = h.post("/tokens", json={"name": name or f"u{uuid.uuid4().hex[:8]}", "role": "user"})
        assert r.status_code in (200, 201), r.text
        return User(server, r.json()["token"])


@pytest.fixture
def user(server) -> User:
    return new_user(server)


@pytest.fixture(scope="module")
def payloads(tmp_path_factory) -> Path:
    """The test payload scripts (job.py, quad.py), uploaded as each test workflow's sandbox."""
    from .wf_helpers import write_payloads

    return write_payloads(tmp_path_factory.mktemp("payloads"))
