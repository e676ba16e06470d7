"""MLflow bridge end to end (issue 7): a REAL MLflow tracking server process (SQLite backend),
a real phpo server started with ``--mlflow-uri``, the agent as a real process, payloads as
small Python scripts that call ``mlflow.log_metric`` themselves.

No ``__init__.py`` here on purpose: a package named ``mlflow`` would shadow the real one.
Fixtures live in this module for the same reason (a second top-level ``conftest`` module).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from agent.agent_helpers import (
    PY,
    AgentProc,
    base_spec,
    free_port,
    get_points,
    sandbox_upload,
    submit,
    wait_task,
    wait_until,
)

try:
    import mlflow  # noqa: F401
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient
except ImportError as e:  # pragma: no cover - depends on the environment
    msg = f"SKIPPING MLFLOW TESTS: mlflow is not importable ({e}); install phpo[mlflow]"
    print("\n" + msg, file=sys.stderr)
    pytest.skip(msg, allow_module_level=True)

pytestmark = pytest.mark.slow


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
            [sys.executable, "-m", "mlflow", "server",
             "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--default-artifact-root", str(self.root / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
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
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


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
        full = [PY, "-m", "phpo.evaluation_container", "--server", server.url, "--token", server.agent_token,
                "--site", "local", "--workdir", str(wd), "--poll-interval", "0.3", "--name", f"mlagent-{n}", *args]
        with open(log_path, "w") as logf:
            proc = subprocess.Popen(full, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        a = AgentProc(proc, log_path, wd, full)
        started.append(a)
        return a

    yield _start
    for a in started:
        a.stop()


def runs_of(client: MlflowClient, exp_name: str) -> list:
    exp = client.get_experiment_by_name(exp_name)
    if exp is None:
        return []
    return list(client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000))


def wait_runs_done(client: MlflowClient, exp_name: str, n: int, timeout: float = 60, diag=lambda: "") -> list:
    def done():
        try:
            runs = runs_of(client, exp_name)
        except Exception:  # noqa: BLE001 - the tracking server may still be starting
            return None
        ok = [r for r in runs if r.info.status in ("FINISHED", "FAILED") and "phpo.state" in r.data.tags]
        return runs if len(ok) >= n else None

    return wait_until(done, timeout, f"{n} finished runs in experiment {exp_name}", diag)


LIVE = """\
import os, mlflow
from phpo.evaluation_container import sdk

p = sdk.load_point()
assert os.environ["MLFLOW_RUN_ID"], "no MLflow run handed to the payload"
for epoch in range(3):
    mlflow.log_metric("val_loss", 10 * p["x"] + epoch, step=epoch)
sdk.report(float((p["x"] - 2) ** 2), metrics={"epochs": 3, "note": "ok"})
"""


def test_points_become_runs_with_params_tags_metrics_and_live_payload_metrics(
        mlflow_server, start_server, agents):
    exp_name = f"user.test.mlflow.{uuid.uuid4().hex[:8]}"
    server = start_server(None, "--mlflow-uri", mlflow_server.uri)
    sb = sandbox_upload(server, {"train.py": LIVE})
    # two points per job: each point of a job gets its own MLFLOW_RUN_ID
    tid = submit(server, base_spec(f"{PY} train.py", sandbox=str(sb), outDS=exp_name, nParallelEvaluation=4,
                                   maxPointsPerEvaluationJob=2))
    agent = agents(server, "--slots", "2")
    t = wait_task(server, tid, agents=(agent,), timeout=90)
    assert t["state"] == "finished", t
    pts = get_points(server, tid)
    assert [p["state"] for p in pts] == ["evaluated"] * 4

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    runs = wait_runs_done(client, exp_name, 4, diag=server.log)
    assert len(runs) == 4
    by_point = {int(r.data.tags["phpo.point_id"]): r for r in runs}
    assert set(by_point) == {p["id"] for p in pts}
    for p in pts:
        r = by_point[p["id"]]
        x = p["params"]["x"]
        assert r.info.status == "FINISHED"
        assert r.data.params == {"x": str(x)}
        tags = r.data.tags
        assert tags["phpo.task_id"] == str(tid)
        assert tags["phpo.point_serial"] == str(p["serial"])
        assert tags["phpo.segment_id"] == "0"
        assert tags["phpo.attempt"] == "1"
        assert tags["phpo.site"] == "local"
        assert tags["phpo.agent"].startswith("mlagent-0")
        assert tags["phpo.metric.note"] == '"ok"'
        assert r.data.metrics["loss"] == float((x - 2) ** 2)
        assert r.data.metrics["epochs"] == 3.0
        # the payload's own per-epoch metrics landed in this point's run
        hist = sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, "val_loss"))
        assert hist == [(0, 10.0 * x), (1, 10.0 * x + 1), (2, 10.0 * x + 2)]


def test_segmented_task_nests_point_runs_under_one_parent_run_per_segment(mlflow_server, start_server, agents):
    exp_name = f"user.test.seg.{uuid.uuid4().hex[:8]}"
    server = start_server(None, "--mlflow-uri", mlflow_server.uri)
    payload = "from phpo.evaluation_container import sdk; sdk.report(float(sdk.load_point()['x']))"
    segments = [{"name": n, "files": [f"/data/{n}.dat"]} for n in ("alpha", "beta")]
    tid = submit(server, base_spec(f"{PY} -c \"{payload}\"", outDS=exp_name, segments=segments, maxPoints=2,
                                   searchSpace={"params": {"x": {"type": "int", "low": 0, "high": 1}}}))
    agent = agents(server, "--slots", "2")
    t = wait_task(server, tid, agents=(agent,), timeout=90)
    assert t["state"] == "finished", t
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    runs = wait_runs_done(client, exp_name, 4, diag=server.log)
    parents = {r.data.tags["phpo.segment"]: r.info.run_id for r in runs if "phpo.segment_parent" in r.data.tags}
    assert set(parents) == {"alpha", "beta"}
    points = [r for r in runs if "phpo.point_id" in r.data.tags]
    assert len(points) == 4
    for r in points:
        assert r.data.tags["mlflow.parentRunId"] == parents[r.data.tags["phpo.segment"]]


SLOW = """\
import time
from phpo.evaluation_container import sdk

p = sdk.load_point()
time.sleep(0.5)
sdk.report(float(p["x"]))
"""


def test_mlflow_down_mid_task_catches_up_without_duplicates(tmp_path, start_server, agents):
    """MLflow stopped after the first run finished, the task runs to the end without it; MLflow
    restarted on the same port/backend: every point has exactly one run with its result. Then
    the outbox rows are dropped (as if the server crashed between creating runs and recording
    them): the restarted server finds the runs by tag instead of creating duplicates."""
    ml = MlflowServer(port=free_port(), root=tmp_path / "ml")
    ml.root.mkdir()
    ml.start()
    try:
        exp_name = f"user.test.down.{uuid.uuid4().hex[:8]}"
        server = start_server(None, "--mlflow-uri", ml.uri)
        sb = sandbox_upload(server, {"train.py": SLOW})
        tid = submit(server, base_spec(f"{PY} train.py", sandbox=str(sb), outDS=exp_name))
        agent = agents(server)
        client = MlflowClient(tracking_uri=ml.uri)
        wait_runs_done(client, exp_name, 1, diag=server.log)
        ml.stop()
        t = wait_task(server, tid, agents=(agent,), timeout=90)
        assert t["state"] == "finished", t  # tasks keep running while MLflow is down
        ml.start()
        runs = wait_runs_done(client, exp_name, 4, diag=server.log)
        pts = get_points(server, tid)
        ids = [r.data.tags["phpo.point_id"] for r in runs]
        assert sorted(ids) == sorted(str(p["id"]) for p in pts)  # all present, none duplicated
        for r in runs:
            p = next(p for p in pts if str(p["id"]) == r.data.tags["phpo.point_id"])
            assert r.info.status == "FINISHED"
            assert r.data.metrics["loss"] == float(p["params"]["x"])

        # crash between "run created" and "run recorded": the outbox forgets, MLflow remembers
        server.stop()
        with sqlite3.connect(server.data_dir / "phpo.db") as db:
            assert db.execute("DELETE FROM mlflow_runs WHERE task_id = ?", (tid,)).rowcount == 4
        server.start()
        wait_until(lambda: sqlite3.connect(server.data_dir / "phpo.db").execute(
            "SELECT count(*) FROM mlflow_runs WHERE task_id = ? AND synced = 'done'", (tid,)).fetchone()[0] == 4,
            60, "the bridge to re-record the task's runs", server.log)
        again = runs_of(client, exp_name)
        assert sorted(r.info.run_id for r in again) == sorted(r.info.run_id for r in runs)
    finally:
        ml.stop()


def test_stack_starts_mlflow_and_dashboard_prints_the_experiment_url(tmp_path):
    """The embedded stack (what ``phpo up`` runs) with its own MLflow server in the data dir;
    ``phpo dashboard ID`` prints the task's experiment URL, which MLflow serves."""
    from conftest import run_phpo
    from phpo.client.cli.stack import Stack

    exp_name = f"user.test.stack.{uuid.uuid4().hex[:8]}"
    with Stack(tmp_path / "data", slots=1, mlflow=True) as stack:
        assert (stack.data_dir / "mlflow").is_dir()
        env = {"PHPO_URL": stack.url, "PHPO_TOKEN": str(stack.user_token)}
        space = tmp_path / "space.json"
        space.write_text('{"params": {"x": {"type": "int", "low": 0, "high": 1}}}')
        out = run_phpo("submit", "--outDS", exp_name, "--optimizer", "grid", "--maxPoints", "2",
                       "--searchSpaceFile", str(space),
                       "--evaluationExec", f"{PY} -c \"from phpo.evaluation_container import sdk; "
                       f"sdk.report(float(sdk.load_point()['x']))\"", "--json", env=env)
        tid = json.loads(out.stdout)["id"]
        run_phpo("wait", str(tid), "--timeout", "90", "--quiet", env=env)
        client = MlflowClient(tracking_uri=stack.mlflow_url)
        runs = wait_runs_done(client, exp_name, 2, timeout=60)
        assert len(runs) == 2
        got = run_phpo("dashboard", str(tid), "--mlflow-uri", str(stack.mlflow_url), env=env).stdout.strip()
        exp = client.get_experiment_by_name(exp_name)
        assert got == f"{stack.mlflow_url}/#/experiments/{exp.experiment_id}"
        assert httpx.get(got.split("#")[0], timeout=10).status_code == 200  # the stock MLflow UI
        missing = run_phpo("dashboard", "999999", "--mlflow-uri", str(stack.mlflow_url), env=env, check=False)
        assert missing.returncode != 0 and "999999" in (missing.stderr + missing.stdout)
