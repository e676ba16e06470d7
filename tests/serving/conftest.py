"""One real stack per test module: MLflow tracking server (session), phpo server bridged to it,
one agent; ``serve(...)`` starts real ``phpo serve`` processes (uvicorn) on random ports."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import LiveServer, free_port
from mlflow_fixtures import stop_group

from agent.agent_helpers import PY


@dataclass
class Serve:
    url: str
    proc: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self) -> None:
        stop_group(self.proc)

    def http(self, token: str | None) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, timeout=60, headers={"Authorization": f"Bearer {token}"} if token else {}
        )


@pytest.fixture(scope="module")
def stack(mlflow_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    port = free_port()
    server = LiveServer(
        url=f"http://127.0.0.1:{port}",
        port=port,
        data_dir=root / "server",
        database_url=None,
        args=["--mlflow-uri", mlflow_server.uri],
    )
    server.data_dir.mkdir()
    server.start()
    log = open(root / "agent.log", "w")  # noqa: SIM115 - the child keeps it
    agent = subprocess.Popen(
        [
            PY,
            "-m",
            "phpo.evaluation_container",
            "--server",
            server.url,
            "--site",
            "local",
            "--slots",
            "2",
            "--workdir",
            str(root / "agent"),
            "--poll-interval",
            "0.3",
            "--name",
            "serving-agent",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "PHPO_TOKEN": server.agent_token},
    )
    server.agent_log = root / "agent.log"
    yield server
    stop_group(agent, grace=40)
    server.stop()


@pytest.fixture(scope="module")
def serve(stack, mlflow_server, tmp_path_factory):
    started: list[Serve] = []

    def _start(*args: str, token: str | None = None) -> Serve:
        port = free_port()
        d = tmp_path_factory.mktemp("serve")
        log_path = d / "serve.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "phpo.serving",
                    "--port",
                    str(port),
                    "--url",
                    stack.url,
                    "--mlflow-uri",
                    mlflow_server.uri,
                    "--state-dir",
                    str(d / "state"),
                    *args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PHPO_TOKEN": token or stack.admin_token, "PYTHONUNBUFFERED": "1"},
            )
        s = Serve(f"http://127.0.0.1:{port}", proc, log_path)
        started.append(s)
        deadline = time.monotonic() + 300  # a loaded machine: loading torch in two workers
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"phpo serve exited {proc.returncode}:\n{s.log()}")
            try:
                if httpx.get(s.url + "/health", timeout=2).status_code == 200:
                    return s
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"phpo serve did not answer within 300 s:\n{s.log()}")

    yield _start
    for s in started:
        s.stop()
