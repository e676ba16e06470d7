"""A real MLflow tracking server and real agents, for the tests that need MLflow (tests/mlflow,
tests/serving): import the fixtures into the test module (``from mlflow_fixtures import ...``).

A module of its own at the top of tests/: tests/mlflow has no ``__init__.py`` (a package named
``mlflow`` would shadow the real one), so its fixtures cannot live in a conftest there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from agent.agent_helpers import PY, AgentProc, free_port


@dataclass
class MlflowServer:
    """``mlflow server`` as a real process; stop/start keep the port and the backend store."""

    port: int
    root: Path
    proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.root / f"mlflow-{int(time.time() * 1000)}.log", "w")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination",
                str(self.root / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited {self.proc.returncode}")
            try:
                if httpx.get(self.uri + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("mlflow server did not answer within 90 s")

    def stop(self) -> None:
        if self.proc:
            stop_group(self.proc)


def stop_group(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM to the process group of ``proc`` (started with a session of its own), SIGKILL after
    ``grace`` seconds."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    s = MlflowServer(port=free_port(), root=tmp_path_factory.mktemp("mlflow"))
    s.start()
    yield s
    s.stop()


@pytest.fixture
def agents(tmp_path):
    started: list[AgentProc] = []

    def _start(server, *args: str) -> AgentProc:
        n = len(started)
        wd = tmp_path / f"agent{n}"
        wd.mkdir()
        log_path = tmp_path / f"agent{n}.log"
        full = [
            PY,
            "-m",
            "phpo.evaluation_container",
            "--server",
            server.url,
            "--site",
            "local",
            "--workdir",
            str(wd),
            "--poll-interval",
            "0.3",
            "--name",
            f"mlagent-{n}",
            *args,
        ]
        with open(log_path, "w") as logf:
            proc = subprocess.Popen(
                full,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PHPO_TOKEN": server.agent_token},
            )
        a = AgentProc(proc, log_path, wd, full)
        started.append(a)
        return a

    yield _start
    for a in started:
        a.stop()
