"""Shared fixtures: real server processes on 127.0.0.1 with random ports, real databases.

- ``pg_url``: a fresh PostgreSQL database for this test session (created on 127.0.0.1:5432 as
  user postgres, dropped at the end). Tests needing it are skipped with a loud reason where
  no PostgreSQL answers.
- ``db_url``: parametrized over ``sqlite`` and ``postgresql``; use it to run a suite on both.
- ``start_server(database_url=None, **opts)``: starts ``python -m phpo.server`` as a real
  process, waits for /health, returns a :class:`LiveServer` with tokens for each role.
- ``live_server``: one SQLite server per test.
- ``pg_db``: a fresh PostgreSQL database for one test (its URL).
- every test ends with the process environment it started with (``_environment_restored``).
- ``start_replicas(n, *opts)``: ``n`` real server processes on one fresh PostgreSQL database
  (replicas behind a load balancer), the first one started first (so it takes the HPO manager's
  lock), sharing their tokens.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

# the real MLflow tracking server and agent fixtures of tests/mlflow and tests/serving
pytest_plugins = ["mlflow_fixtures"]

PG_ADMIN_DSN = os.environ.get("PHPO_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")

# Seconds each of the slowest test files took in one full run (junit times of `make test` on two
# loaded cores, 2026-12-02). With `--dist loadfile` xdist hands files to workers in collection
# order; starting the long ones first keeps one long file from running alone at the end.
# Regenerate from `make test PYTEST_ARGS=--junitxml=/tmp/junit.xml` when the suite changes.
SLOW_FILES = {
    "tests/fuzz/test_schemathesis.py": 1027,
    "tests/mlflow/test_mlflow_bridge.py": 795,
    "tests/ui/test_plots.py": 323,
    "tests/ui/test_web.py": 309,
    "tests/serving/test_registry.py": 307,
    "tests/agent/test_data_e2e.py": 306,
    "tests/serving/test_serve.py": 303,
    "tests/agent/test_data_specs_shared.py": 290,
    "tests/server/test_broker.py": 288,
    "tests/server/test_api.py": 261,
    "tests/client/test_cli_demo.py": 259,
    "tests/agent/test_agent_dask.py": 255,
    "tests/agent/test_agent_gang.py": 247,
    "tests/workflows/test_workflow_durability.py": 245,
    "tests/agent/test_sandbox_e2e.py": 243,
    "tests/serving/test_serve_node.py": 232,
    "tests/client/test_cli_lifecycle.py": 229,
    "tests/server/test_replicas.py": 227,
    "tests/agent/test_agent_e2e.py": 223,
    "tests/server/test_hostile_input.py": 218,
    "tests/client/test_cli_e2e.py": 215,
    "tests/agent/test_segmented_e2e.py": 208,
    "tests/pruning/test_pruning_mlflow.py": 206,
    "tests/server/test_segments_view.py": 200,
    "tests/pruning/test_pruning_e2e.py": 192,
    "tests/server/test_cli.py": 181,
    "tests/pruning/test_pruning_decisions.py": 180,
    "tests/server/test_manager.py": 179,
    "tests/workflows/test_workflows_e2e.py": 164,
    "tests/server/test_specs_artifacts.py": 160,
    "tests/client/test_cli_honest.py": 160,
    "tests/agent/test_agent_pause.py": 148,
}


def pytest_collection_modifyitems(session, config, items):
    """The slowest files first (a stable sort: the order inside a file and among the others stays)."""
    root = Path(str(config.rootpath))

    def weight(item) -> int:
        try:
            rel = Path(str(item.path)).relative_to(root).as_posix()
        except ValueError:
            return 0
        return SLOW_FILES.get(rel, 0)

    items.sort(key=lambda item: -weight(item))


@pytest.fixture(autouse=True)
def _environment_restored():
    """Each test ends with this process's environment as it found it. MLflow's
    ``set_tracking_uri`` exports ``MLFLOW_TRACKING_URI``: left behind by one test, every process a
    later test of the same worker starts (``phpo up``, ``phpo dashboard``) went to that test's
    MLflow server."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_available() -> str | None:
    """None when PostgreSQL answers, else the reason it does not."""
    try:
        import psycopg
    except ImportError as e:  # pragma: no cover
        return f"psycopg is not installed ({e})"
    try:
        with psycopg.connect(PG_ADMIN_DSN, connect_timeout=3):
            return None
    except Exception as e:  # noqa: BLE001
        return f"PostgreSQL at {PG_ADMIN_DSN} does not answer: {e}"


@pytest.fixture(scope="session")
def pg_url():
    reason = _pg_available()
    if reason:
        msg = f"SKIPPING POSTGRESQL TESTS: {reason}"
        print("\n" + "!" * len(msg) + "\n" + msg + "\n" + "!" * len(msg), file=sys.stderr)
        pytest.skip(msg)
    import psycopg

    name = f"phpo_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A database URL for each backend: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'phpo.db'}"
    # a fresh database per test keeps PostgreSQL tests as isolated as SQLite ones
    return request.getfixturevalue("pg_db")


def _drop_db(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_phpo(
    *args: str,
    env: dict | None = None,
    timeout: float = 120,
    check: bool = True,
    cwd: str | Path | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess:
    """Run the installed ``phpo`` command as a user would."""
    exe = Path(sys.executable).with_name("phpo")
    full_env = {**os.environ, **(env or {})}
    p = subprocess.run(
        [str(exe), *args], capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd, input=input
    )
    if check and p.returncode != 0:
        raise AssertionError(
            f"phpo {' '.join(args)} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
        )
    return p


@dataclass
class LiveServer:
    url: str
    port: int
    data_dir: Path
    database_url: str | None
    args: list[str]
    proc: subprocess.Popen | None = None
    tokens: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None

    @property
    def user_token(self) -> str:
        return self.token("alice", "user")

    @property
    def agent_token(self) -> str:
        return self.token("agent-1", "agent")

    @property
    def admin_token(self) -> str:
        return self.token("root", "admin")

    def db_args(self) -> list[str]:
        """Where the database is: an explicit URL, else the SQLite file in the data dir."""
        return (
            ["--database-url", self.database_url] if self.database_url else ["--data-dir", str(self.data_dir)]
        )

    def token(self, name: str, role: str) -> str:
        """A token for ``name`` (created on first use through ``phpo server create-token``)."""
        if name not in self.tokens:
            p = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "phpo.server",
                    "create-token",
                    "--name",
                    name,
                    "--role",
                    role,
                    *self.db_args(),
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert p.returncode == 0, f"create-token failed: {p.stderr}"
            self.tokens[name] = p.stdout.strip()
        return self.tokens[name]

    def start(self) -> None:
        self.log_path = self.data_dir / f"server-{int(time.time() * 1000)}.log"
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "phpo.server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                *self.db_args(),
                *self.args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},  # uvicorn's access log goes to stdout
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not answer within 60 s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def kill(self) -> None:
        """kill -9, as a crash would."""
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self, token: str | None = None) -> httpx.Client:
        """A raw HTTP client on /api/v1 with the given token (default: the user's)."""
        return httpx.Client(
            base_url=self.url + "/api/v1",
            headers={"Authorization": f"Bearer {token or self.user_token}"},
            timeout=30,
        )


@pytest.fixture
def start_server(tmp_path):
    servers: list[LiveServer] = []

    def _start(database_url: str | None = None, *args: str, data_dir: Path | None = None) -> LiveServer:
        port = free_port()
        d = data_dir or (tmp_path / f"server{len(servers)}")
        d.mkdir(parents=True, exist_ok=True)
        s = LiveServer(
            url=f"http://127.0.0.1:{port}", port=port, data_dir=d, database_url=database_url, args=list(args)
        )
        s.start()
        servers.append(s)
        return s

    yield _start
    for s in servers:
        s.stop()


@pytest.fixture
def live_server(start_server) -> LiveServer:
    return start_server()


@pytest.fixture
def pg_db(request, pg_url) -> str:
    """A fresh PostgreSQL database for this test (dropped after it)."""
    import psycopg

    name = f"phpo_t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    request.addfinalizer(lambda: _drop_db(name))
    return pg_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def start_replicas(pg_db, start_server):
    """``start_replicas(n, *opts)``: ``n`` servers on one PostgreSQL database; tokens are shared."""

    def _start(n: int, *args: str) -> list[LiveServer]:
        servers = [start_server(pg_db, *args) for _ in range(n)]
        for s in servers[1:]:
            s.tokens = servers[0].tokens  # one database: a token made through any replica works on all
        return servers

    return _start
