"""MLflow bridge end to end (issue 7): a REAL MLflow tracking server process (SQLite backend),
a real phpo server started with ``--mlflow-uri``, the agent as a real process, payloads as
small Python scripts that call ``mlflow.log_metric`` themselves.

No ``__init__.py`` here on purpose: a package named ``mlflow`` would shadow the real one.
Fixtures live in this module for the same reason (a second top-level ``conftest`` module).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import httpx
import pytest

from agent.agent_helpers import (
    PY,
    AgentProc,
    base_spec,
    free_port,
    get_artifacts,
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

from mlflow_fixtures import MlflowServer

pytestmark = pytest.mark.slow


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
# the payload's MLflow logs into its working directory; phpo imports it into the point's run
assert os.environ["MLFLOW_TRACKING_URI"] == "file://" + os.getcwd() + "/mlruns", os.environ["MLFLOW_TRACKING_URI"]
for epoch in range(3):
    mlflow.log_metric("val_loss", 10 * p["x"] + epoch, step=epoch)
    sdk.report_intermediate(epoch, p["x"] + epoch / 10)
sdk.report_intermediate(3, float("nan"))  # diverged: sent as null (JSON has no NaN), kept off the curve
sdk.report(float((p["x"] - 2) ** 2), metrics={"epochs": 3, "note": "ok"})
"""


def test_points_become_runs_with_params_tags_metrics_and_live_payload_metrics(
    mlflow_server, start_server, agents
):
    exp_name = f"user.test.mlflow.{uuid.uuid4().hex[:8]}"
    server = start_server(None, "--mlflow-uri", mlflow_server.uri)
    sb = sandbox_upload(server, {"train.py": LIVE})
    # two points per job: each point of a job gets its own ./mlruns, imported into its own run
    tid = submit(
        server,
        base_spec(
            f"{PY} train.py",
            sandbox=str(sb),
            outDS=exp_name,
            nParallelEvaluation=4,
            maxPointsPerEvaluationJob=2,
        ),
    )
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
        assert r.info.run_name == f"point-{p['id']}"  # as the CLI names the point
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
        wait_until(
            lambda rid=r.info.run_id: client.get_metric_history(rid, "val_loss"),
            30,
            "the payload's mlruns imported",
            server.log,
        )
        hist = sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, "val_loss"))
        assert hist == [(0, 10.0 * x), (1, 10.0 * x + 1), (2, 10.0 * x + 2)]
        # and its sdk.report_intermediate values are the run's learning curve
        curve = sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, "intermediate"))
        assert curve == [(e, x + e / 10) for e in range(3)]
    assert agent.log().count("it is sent as null") == 4  # each payload's NaN, named in the agent's log


def run_two_segments(
    mlflow_server, start_server, agents, exp_name: str, names: tuple[str, str], also: dict | None = None
):
    """A task of two segments x 2 points through a server bridged to ``mlflow_server`` and a
    real agent, run to its end; returns (server, task id). ``also``: the spec of a second task
    run beside it (its id is appended to what is returned)."""
    server = start_server(None, "--mlflow-uri", mlflow_server.uri)
    payload = "from phpo.evaluation_container import sdk; sdk.report(float(sdk.load_point()['x']))"
    segments = [{"name": n, "files": [f"/data/{n}.dat"]} for n in names]
    tids = [
        submit(
            server,
            base_spec(
                f'{PY} -c "{payload}"',
                outDS=exp_name,
                segments=segments,
                maxPoints=2,
                searchSpace={"params": {"x": {"type": "int", "low": 0, "high": 1}}},
            ),
        )
    ]
    if also is not None:
        tids.append(submit(server, also))
    agent = agents(server, "--slots", "2")
    for tid in tids:
        t = wait_task(server, tid, agents=(agent,), timeout=90)
        assert t["state"] == "finished", t
    return (server, *tids)


def test_segmented_task_nests_point_runs_under_one_parent_run_per_segment(
    mlflow_server, start_server, agents
):
    exp_name = f"user.test.seg.{uuid.uuid4().hex[:8]}"
    server, _ = run_two_segments(mlflow_server, start_server, agents, exp_name, ("alpha", "beta"))
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    runs = wait_runs_done(client, exp_name, 4, diag=server.log)
    parents = {
        r.data.tags["phpo.segment"]: r.info.run_id for r in runs if "phpo.segment_parent" in r.data.tags
    }
    assert set(parents) == {"alpha", "beta"}
    points = [r for r in runs if "phpo.point_id" in r.data.tags]
    assert len(points) == 4
    for r in points:
        assert r.data.tags["mlflow.parentRunId"] == parents[r.data.tags["phpo.segment"]]
    # the parent runs end with their segments
    wait_until(
        lambda: (
            {r.info.status for r in runs_of(client, exp_name) if "phpo.segment_parent" in r.data.tags}
            == {"FINISHED"}
        ),
        30,
        "the parent runs to be FINISHED",
        server.log,
    )


EPOCHS = 4
CURVES = """\
import os, sys, time
import mlflow
from phpo.evaluation_container import sdk

p = sdk.load_point()
while os.path.exists(sys.argv[1]):  # the test holds the payloads here between its phases
    time.sleep(0.05)
for epoch in range(EPOCHS):
    mlflow.log_metric("val_loss", 10 * p["x"] + epoch, step=epoch)
    sdk.report_intermediate(epoch, p["x"] + epoch / 10)
    time.sleep(0.05)
sdk.report(float(p["x"]))
""".replace("EPOCHS", str(EPOCHS))


def _missing_history(client, runs: dict[int, object], pts: list[dict]) -> list[str]:
    """What each point's run lacks of the payload's full metric history (empty: nothing)."""
    out = []
    for p in pts:
        r, x = runs.get(p["id"]), p["params"]["x"]
        if r is None:
            out.append(f"point {p['id']}: no run")
            continue
        if _history(client, r.info.run_id, "val_loss") != [(e, 10.0 * x + e) for e in range(EPOCHS)]:
            out.append(f"point {p['id']}: val_loss {_history(client, r.info.run_id, 'val_loss')}")
        if _history(client, r.info.run_id, "intermediate") != [(e, x + e / 10) for e in range(EPOCHS)]:
            out.append(f"point {p['id']}: intermediate {_history(client, r.info.run_id, 'intermediate')}")
    return out


def test_mlflow_late_and_down_mid_task_loses_no_payload_metric_and_duplicates_no_run(
    tmp_path, start_server, agents
):
    """MLflow started only after the first points were leased and evaluated, then stopped
    mid-task (the rest of the task runs without it) and started again: every point has exactly
    one run, named as the CLI names the point, with the payload's full metric history (what it
    logged with mlflow.log_metric and what it sent with sdk.report_intermediate). Then the outbox
    rows are dropped (as if the server crashed between creating runs and recording them): the
    restarted server finds the runs by tag instead of creating duplicates, and writes no metric
    twice."""
    ml = MlflowServer(port=free_port(), root=tmp_path / "ml")
    ml.root.mkdir()
    hold = tmp_path / "hold"
    try:
        exp_name = f"user.test.down.{uuid.uuid4().hex[:8]}"
        server = start_server(None, "--mlflow-uri", ml.uri)  # MLflow is not running yet
        sb = sandbox_upload(server, {"train.py": CURVES})
        tid = submit(
            server,
            base_spec(
                f"{PY} train.py {hold}",
                sandbox=str(sb),
                outDS=exp_name,
                maxPoints=6,
                nParallelEvaluation=2,
                searchSpace={"params": {"x": {"type": "int", "low": 0, "high": 5}}},
            ),
        )
        agent = agents(server, "--slots", "2")

        def evaluated() -> int:
            return sum(p["state"] == "evaluated" for p in get_points(server, tid))

        wait_until(lambda: evaluated() >= 2, 60, "2 points evaluated without MLflow", agent.log)
        hold.touch()
        ml.start()  # late: points were leased and evaluated before it answered
        client = MlflowClient(tracking_uri=ml.uri)
        wait_runs_done(client, exp_name, 2, diag=server.log)
        hold.unlink()
        wait_until(lambda: evaluated() >= 4, 60, "4 points evaluated", agent.log)
        hold.touch()
        ml.stop()  # mid-task: the last points run, from their start, without it
        hold.unlink()
        t = wait_task(server, tid, agents=(agent,), timeout=90)
        assert t["state"] == "finished", t  # tasks keep running while MLflow is down
        assert "Traceback" not in agent.log(), agent.log()[-3000:]
        ml.start()
        runs = wait_runs_done(client, exp_name, 6, diag=server.log)
        pts = get_points(server, tid)
        metrics = {a["id"] for a in get_artifacts(server, tid, "metrics")}
        assert len(metrics) == 6, get_artifacts(server, tid)  # each payload's mlruns/, shipped by the agent
        wait_until(
            lambda: metrics <= {r[0] for r in _outbox(server, tid) if r[2] == "done"},
            60,
            "every point's mlruns/ imported",
            lambda: f"{_outbox(server, tid)}\n{server.log()[-3000:]}",
        )
        ids = [r.data.tags["phpo.point_id"] for r in runs]
        assert sorted(ids) == sorted(str(p["id"]) for p in pts)  # all present, none duplicated
        by_point = {int(r.data.tags["phpo.point_id"]): r for r in runs}
        for p in pts:
            r = by_point[p["id"]]
            assert r.info.status == "FINISHED"
            assert r.info.run_name == f"point-{p['id']}"
            assert r.data.metrics["loss"] == float(p["params"]["x"])
        missing = _missing_history(client, by_point, pts)
        assert not missing, (
            f"{len(pts) - len({m.split(':')[0] for m in missing})} of {len(pts)} runs have "
            f"the payload's full metric history:\n" + "\n".join(missing)
        )

        # crash between "run created" and "run recorded": the outbox forgets, MLflow remembers
        server.stop()
        with sqlite3.connect(server.data_dir / "phpo.db") as db:
            assert db.execute("DELETE FROM mlflow_runs WHERE task_id = ?", (tid,)).rowcount == 6
        server.start()
        wait_until(
            lambda: (
                sqlite3.connect(server.data_dir / "phpo.db")
                .execute("SELECT count(*) FROM mlflow_runs WHERE task_id = ? AND synced = 'done'", (tid,))
                .fetchone()[0]
                == 6
            ),
            60,
            "the bridge to re-record the task's runs",
            server.log,
        )
        again = runs_of(client, exp_name)
        assert sorted(r.info.run_id for r in again) == sorted(r.info.run_id for r in runs)
        assert not _missing_history(client, by_point, pts)  # the learning curves are not written twice
    finally:
        hold.unlink(missing_ok=True)
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
        out = run_phpo(
            "submit",
            "--outDS",
            exp_name,
            "--optimizer",
            "grid",
            "--maxPoints",
            "2",
            "--searchSpaceFile",
            str(space),
            "--evaluationExec",
            f'{PY} -c "from phpo.evaluation_container import sdk; '
            f"print('x', sdk.load_point()['x']); sdk.report(float(sdk.load_point()['x']))\"",
            "--json",
            env=env,
        )
        tid = json.loads(out.stdout)["id"]
        run_phpo("wait", str(tid), "--timeout", "90", "--quiet", env=env)
        client = MlflowClient(tracking_uri=stack.mlflow_url)
        runs = wait_runs_done(client, exp_name, 2, timeout=60)
        assert len(runs) == 2
        # the stack's MLflow serves artifacts (--artifacts-destination in the data dir): logs land there
        wait_until(
            lambda: all(client.list_artifacts(r.info.run_id, "logs") for r in runs), 60, "logs in MLflow"
        )
        assert list((stack.data_dir / "mlflow" / "artifacts").rglob("*.stdout.txt"))
        got = run_phpo("dashboard", str(tid), "--mlflow-uri", str(stack.mlflow_url), env=env).stdout.strip()
        exp = client.get_experiment_by_name(exp_name)
        assert got == f"{stack.mlflow_url}/#/experiments/{exp.experiment_id}/runs?viewStateShareKey=phpo"
        # the view it opens: best points first, the loss and the point's params as columns
        view = json.loads(exp.tags["mlflow.sharedViewState.phpo"])
        assert view == {
            "orderByKey": "metrics.`loss`",
            "orderByAsc": True,
            "selectedColumns": ["metrics.`loss`", "params.`x`"],
        }
        assert httpx.get(got.split("#")[0], timeout=10).status_code == 200  # the stock MLflow UI
        missing = run_phpo("dashboard", "999999", "--mlflow-uri", str(stack.mlflow_url), env=env, check=False)
        assert missing.returncode != 0 and "999999" in (missing.stderr + missing.stdout)


# --------------------------------------------------------------------------- run status


BLOCK = """\
import os, sys, time
from phpo.evaluation_container import sdk

p = sdk.load_point()
deadline = time.time() + 60
while not os.path.exists(sys.argv[1]) and time.time() < deadline:
    time.sleep(0.1)
sdk.report(float(p["x"]))
"""


def test_run_is_scheduled_until_its_point_is_leased_then_running_then_finished(
    mlflow_server, start_server, agents, tmp_path
):
    exp_name = f"user.test.status.{uuid.uuid4().hex[:8]}"
    server = start_server(None, "--mlflow-uri", mlflow_server.uri)
    go = tmp_path / "go"
    sb = sandbox_upload(server, {"block.py": BLOCK})
    tid = submit(
        server,
        base_spec(
            f"{PY} block.py {go}",
            sandbox=str(sb),
            outDS=exp_name,
            maxPoints=2,
            nParallelEvaluation=2,
            nPointsPerIteration=2,
            searchSpace={"params": {"x": {"type": "int", "low": 0, "high": 1}}},
        ),
    )
    client = MlflowClient(tracking_uri=mlflow_server.uri)

    def statuses() -> dict[str, str]:
        return {
            r.data.tags["phpo.point_id"]: r.info.status
            for r in runs_of(client, exp_name)
            if "phpo.point_id" in r.data.tags
        }

    # no agent yet: both points wait for a job, their runs are SCHEDULED
    wait_until(lambda: list(statuses().values()) == ["SCHEDULED"] * 2, 60, "2 SCHEDULED runs", server.log)
    agent = agents(server, "--slots", "1")  # one job at a time: one point leased, one still waiting
    wait_until(
        lambda: sorted(statuses().values()) == ["RUNNING", "SCHEDULED"],
        60,
        "one RUNNING run",
        lambda: f"{statuses()}\n{agent.log()[-3000:]}",
    )
    leased = [p for p in get_points(server, tid) if p["state"] == "leased"]
    assert len(leased) == 1 and statuses()[str(leased[0]["id"])] == "RUNNING"
    go.write_text("go")
    t = wait_task(server, tid, agents=(agent,), timeout=90)
    assert t["state"] == "finished", t
    wait_until(lambda: list(statuses().values()) == ["FINISHED"] * 2, 60, "2 FINISHED runs", server.log)


# --------------------------------------------------------------------------- upstream mlruns/ tarballs

UPSTREAM = """\
import os, shutil, sys, tarfile
from phpo.evaluation_container import sdk

p = sdk.load_point()
x = p["x"]
print(f"training x={x}")
print(f"stderr of x={x}", file=sys.stderr)
# an upstream payload: MLflow's file store in the working directory, tarred as evaluationMetrics
os.environ.pop("MLFLOW_RUN_ID", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
import mlflow

shutil.rmtree("mlruns", ignore_errors=True)
mlflow.set_tracking_uri("file:" + os.path.abspath("mlruns"))
with mlflow.start_run(run_name=f"train-{x}"):
    mlflow.log_param("lr", 0.1 * (x + 1))
    mlflow.log_param("x", f"{x}.0")  # the point's own param "x" is "<x>": a conflict, kept as the point's
    mlflow.set_tag("stage", "train")
    for step in range(5):
        mlflow.log_metric("acc", x + step / 10, step=step)
    if x % 2:  # odd points: a second, nested run -> both become child runs of the point's run
        with mlflow.start_run(run_name=f"eval-{x}", nested=True):
            mlflow.log_metric("auc", 0.5, step=0)
            mlflow.log_metric("auc", 0.75, step=1)
with tarfile.open("metrics.tgz", "w:gz") as t:
    t.add("mlruns")
sdk.report(float((x - 2) ** 2))
"""


def _outbox(server, tid: int) -> list[tuple]:
    """The bridge's artifact records of task ``tid`` (in the server's SQLite file or PostgreSQL)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(server.database_url or f"sqlite:///{server.data_dir / 'phpo.db'}")
    try:
        with engine.connect() as conn:
            return [
                tuple(r)
                for r in conn.execute(
                    sqlalchemy.text(
                        "SELECT artifact_id, kind, status, detail FROM mlflow_artifacts WHERE task_id = :t "
                        "ORDER BY artifact_id"
                    ),
                    {"t": tid},
                )
            ]
    finally:
        engine.dispose()


def _history(client, run_id: str, key: str) -> list[tuple]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_mlruns_tarball_is_imported_and_logs_are_uploaded_once(mlflow_server, start_server, agents, tmp_path):
    exp_name = f"user.test.upstream.{uuid.uuid4().hex[:8]}"
    server = start_server(None, "--mlflow-uri", mlflow_server.uri)
    sb = sandbox_upload(server, {"train.py": UPSTREAM})
    tid = submit(
        server,
        base_spec(
            f"{PY} train.py",
            sandbox=str(sb),
            outDS=exp_name,
            nParallelEvaluation=2,
            evaluationMetrics="metrics.tgz",
        ),
    )
    agent = agents(server, "--slots", "2")
    t = wait_task(server, tid, agents=(agent,), timeout=120)
    assert t["state"] == "finished", t
    pts = get_points(server, tid)
    arts = get_artifacts(server, tid)
    sent = sorted(a["id"] for a in arts if a["kind"] in ("log", "metrics"))
    assert len([a for a in arts if a["kind"] == "metrics"]) == 4
    wait_until(
        lambda: [r[0] for r in _outbox(server, tid)] == sent,
        60,
        "every log and metrics file handled",
        server.log,
    )
    assert {r[2] for r in _outbox(server, tid)} == {"done"}, _outbox(server, tid)

    client = MlflowClient(tracking_uri=mlflow_server.uri)

    def snapshot() -> dict:
        """Everything the import wrote, to compare after a second import."""
        runs = runs_of(client, exp_name)
        out = {}
        for r in runs:
            rid = r.info.run_id
            out[rid] = (
                r.info.status,
                r.data.params,
                {k: _history(client, rid, k) for k in r.data.metrics},
                sorted(a.path for a in client.list_artifacts(rid, "logs")),
            )
        return out

    wait_runs_done(client, exp_name, 4, diag=server.log)
    runs = runs_of(client, exp_name)
    point_runs = {int(r.data.tags["phpo.point_id"]): r for r in runs if "phpo.point_id" in r.data.tags}
    children = [r for r in runs if "phpo.parent_point_id" in r.data.tags]
    assert len(point_runs) == 4 and len(children) == 4  # two child runs for each of the 2 odd points
    metrics_art = {a["point_id"]: a["id"] for a in arts if a["kind"] == "metrics"}
    for p in pts:
        x, r = p["params"]["x"], point_runs[p["id"]]
        rid = r.info.run_id
        # the point's logs are artifacts of its run, byte for byte what phpo stored
        logs = sorted(a.path for a in client.list_artifacts(rid, "logs"))
        assert [Path(n).name.split(".", 1)[1] for n in logs] == ["stderr.txt", "stdout.txt"], logs
        local = client.download_artifacts(
            rid, next(n for n in logs if n.endswith("stdout.txt")), str(tmp_path)
        )
        assert Path(local).read_text() == f"training x={x}\n"
        assert client.list_artifacts(rid, "metrics") == []  # imported, not uploaded as a file
        mine = [c for c in children if c.data.tags["phpo.parent_point_id"] == str(p["id"])]
        if x % 2 == 0:  # one run in the tarball: merged into the point's run
            assert not mine
            assert r.data.params == {"x": str(x), "lr": str(0.1 * (x + 1))}
            assert r.data.tags["phpo.import_param_conflicts"] == "x"
            assert r.data.tags["stage"] == "train"
            assert r.data.tags[f"phpo.imported.{metrics_art[p['id']]}"]
            assert _history(client, rid, "acc") == [(s, x + s / 10) for s in range(5)]
            assert r.data.metrics["loss"] == float((x - 2) ** 2)  # phpo's own result is still there
        else:  # two runs: child runs of the point's run, their own nesting kept
            by_name = {c.info.run_name: c for c in mine}
            assert set(by_name) == {f"train-{x}", f"eval-{x}"}
            train, ev = by_name[f"train-{x}"], by_name[f"eval-{x}"]
            assert train.data.tags["mlflow.parentRunId"] == rid
            assert ev.data.tags["mlflow.parentRunId"] == train.info.run_id
            assert train.data.params == {"lr": str(0.1 * (x + 1)), "x": f"{x}.0"}
            assert train.data.tags["stage"] == "train"
            assert _history(client, train.info.run_id, "acc") == [(s, x + s / 10) for s in range(5)]
            assert _history(client, ev.info.run_id, "auc") == [(0, 0.5), (1, 0.75)]
            assert train.info.status == ev.info.status == "FINISHED"
            assert r.data.params == {"x": str(x)}
    before = snapshot()

    # a second import: the outbox forgets (a crash before recording), and MLflow lost the marker
    # tags too (a crash between writing the metrics and the marker): nothing may be doubled
    server.stop()
    with sqlite3.connect(server.data_dir / "phpo.db") as db:
        assert db.execute("DELETE FROM mlflow_artifacts WHERE task_id = ?", (tid,)).rowcount == len(sent)
    for r in runs:
        for k in r.data.tags:
            if k.startswith("phpo.imported.") or k == "phpo.import_complete":
                client.delete_tag(r.info.run_id, k)
    server.start()
    wait_until(
        lambda: [r[0] for r in _outbox(server, tid)] == sent, 60, "the artifacts handled again", server.log
    )
    assert snapshot() == before


UPSTREAM_DIR = Path(__file__).with_name("upstream_payload")


def test_upstream_mlflow_payload_runs_unchanged_through_phpo_agent_and_lands_in_its_run(
    mlflow_server, start_server, tmp_path
):
    """The payload pattern of the panda-docs phpo page, as files a user would have
    (upstream_payload/: config_dev.json, exec_in_container.sh, search_space_example2.json and a
    run_model.py that does mlflow.start_run(), log_params(point), metrics per epoch into ./mlruns),
    submitted with ``phpo --loadJson config_dev.json --site XYZ --outDS ...`` from that folder,
    evaluated by a real ``phpo agent``, with a real ``mlflow server``: every point succeeds (its
    log_params of a bool is not refused), its own metrics.tgz holds its ./mlruns, and what it
    logged (params, per-epoch histories, an artifact) is in the point's run, with no conflict."""
    from conftest import run_phpo

    exp_name = f"user.test.docs.{uuid.uuid4().hex[:8]}"
    server = start_server(None, "--mlflow-uri", mlflow_server.uri)
    work = tmp_path / "my_hpo"
    shutil.copytree(UPSTREAM_DIR, work)
    env = {"PHPO_URL": server.url, "PHPO_TOKEN": server.user_token}
    out = run_phpo(
        "--loadJson", "config_dev.json", "--site", "XYZ", "--outDS", exp_name, "--json", env=env, cwd=work
    )
    tid = json.loads(out.stdout)["id"]

    log_path = tmp_path / "agent.log"
    phpo = str(Path(PY).with_name("phpo"))
    agent_env = {
        **os.environ,
        "PHPO_TOKEN": server.agent_token,
        "PATH": f"{Path(PY).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }  # `python` as in the docs
    agent_env.pop("MLFLOW_TRACKING_URI", None)
    with open(log_path, "w") as logf:
        proc = subprocess.Popen(
            [
                phpo,
                "agent",
                "--server",
                server.url,
                "--site",
                "XYZ",
                "--slots",
                "2",
                "--workdir",
                str(tmp_path / "agent"),
                "--poll-interval",
                "0.3",
            ],
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=agent_env,
        )
    agent = AgentProc(proc, log_path, tmp_path / "agent", [phpo, "agent"])
    try:
        t = wait_task(server, tid, agents=(agent,), timeout=120)
    finally:
        agent.stop()
    assert t["state"] == "finished", t
    pts = get_points(server, tid)
    assert [p["state"] for p in pts] == ["evaluated"] * 3, [(p["state"], p.get("error")) for p in pts]

    arts = get_artifacts(server, tid)
    tarballs = [a for a in arts if a["kind"] == "metrics"]
    assert sorted(a["name"] for a in tarballs) == ["metrics.tgz"] * 3  # the payload's own, nothing added
    with server.client() as c:
        for a in tarballs:
            with tarfile.open(fileobj=io.BytesIO(c.get(f"/artifacts/{a['id']}").content)) as tar:
                names = tar.getnames()
            assert any(n.startswith("mlruns/0/") and n.endswith("/metrics/val_loss") for n in names), names
    stdout = [a for a in arts if a["kind"] == "log" and a["name"].endswith("stdout.txt")]
    with server.client() as c:
        assert all("mlruns/0/" in c.get(f"/artifacts/{a['id']}").text for a in stdout)  # tar cvfz listed them

    wait_until(
        lambda: {a["id"] for a in tarballs} <= {r[0] for r in _outbox(server, tid) if r[2] == "done"},
        60,
        "the tarballs imported",
        lambda: f"{_outbox(server, tid)}\n{server.log()[-3000:]}",
    )
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    runs = {
        int(r.data.tags["phpo.point_id"]): r for r in wait_runs_done(client, exp_name, 3, diag=server.log)
    }
    assert len(runs) == 3  # merged into the point's run: no child runs
    for p in pts:
        point, r = p["params"], runs[p["id"]]
        rid = r.info.run_id
        assert r.data.params == {k: str(v) for k, v in point.items()}  # what mlflow.log_params(point) writes
        assert "phpo.import_param_conflicts" not in r.data.tags
        losses = [
            1.0 / (e + 1) + 0.01 * point["batch_size"] + (0.1 if point["auto_lr"] else 0.2)
            for e in range(point["epoch"])
        ]
        assert _history(client, rid, "val_loss") == list(enumerate(losses))
        assert _history(client, rid, "acc") == [(e, 1.0 - v / 2) for e, v in enumerate(losses)]
        assert r.data.metrics["loss"] == p["loss"] == losses[-1]
        assert [a.path for a in client.list_artifacts(rid) if a.path == "point.json"] == ["point.json"]
        assert (
            json.loads(Path(client.download_artifacts(rid, "point.json", str(tmp_path))).read_text()) == point
        )


# --------------------------------------------------------------------------- checkpoints, limits, bad input

CKPT = """\
import os, time
from phpo.evaluation_container import sdk

p = sdk.load_point()
os.makedirs("ckpt", exist_ok=True)
open("ckpt/state.txt", "w").write(f"x={p['x']}")
time.sleep(2.5)  # the agent uploads the checkpoint every second while the payload runs
sdk.report(float((p["x"] - 2) ** 2))
"""


def test_best_points_checkpoint_goes_to_its_run_once_its_segment_ended(
    mlflow_server, db_url, start_server, agents, tmp_path
):
    """Per segment, only the best evaluated point's checkpoint is copied to MLflow (on SQLite and
    PostgreSQL: the bridge's queries over ended segments run on both)."""
    exp_name = f"user.test.ckpt.{uuid.uuid4().hex[:8]}"
    server = start_server(db_url, "--mlflow-uri", mlflow_server.uri)
    sb = sandbox_upload(server, {"train.py": CKPT})
    segments = [{"name": n, "files": [f"/data/{n}.dat"]} for n in ("higgs", "ttbar")]
    tid = submit(
        server,
        base_spec(
            f"{PY} train.py",
            sandbox=str(sb),
            outDS=exp_name,
            nParallelEvaluation=2,
            segments=segments,
            maxPoints=3,
            checkPointToSave="ckpt",
            checkPointInterval="1s",
            searchSpace={"params": {"x": {"type": "int", "low": 1, "high": 3}}},
        ),
    )
    agent = agents(server, "--slots", "2")
    t = wait_task(server, tid, agents=(agent,), timeout=120)
    assert t["state"] == "finished", t
    pts = get_points(server, tid)
    assert len(pts) == 6
    ckpts = {a["point_id"]: a for a in get_artifacts(server, tid, "checkpoint")}
    best = {p["id"] for p in pts if p["params"]["x"] == 2}  # loss (x-2)^2: one best point per segment
    assert len(best) == 2 and best <= set(ckpts), (
        f"no checkpoint of a best point: {ckpts}\n{agent.log()[-3000:]}"
    )
    wait_until(
        lambda: (
            {r[0] for r in _outbox(server, tid) if r[1] == "checkpoint"} == {a["id"] for a in ckpts.values()}
        ),
        60,
        "every checkpoint looked at",
        server.log,
    )
    status = {r[0]: r[2] for r in _outbox(server, tid) if r[1] == "checkpoint"}
    assert status == {a["id"]: "done" if pid in best else "skipped" for pid, a in ckpts.items()}

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    all_runs = runs_of(client, exp_name)
    runs = {int(r.data.tags["phpo.point_id"]): r for r in all_runs if "phpo.point_id" in r.data.tags}
    for p in pts:
        rid = runs[p["id"]].info.run_id
        got = [a.path for a in client.list_artifacts(rid, "checkpoint")]
        if p["id"] in best:
            assert got == [f"checkpoint/{ckpts[p['id']]['name']}"]
            assert runs[p["id"]].data.tags["phpo.best_in_segment"] == "true"
            local = client.download_artifacts(rid, got[0], str(tmp_path / str(p["id"])))
            with server.client() as c:  # the same bytes as phpo's own copy
                assert Path(local).read_bytes() == c.get(f"/artifacts/{ckpts[p['id']]['id']}").content
        else:
            assert got == [] and "phpo.best_in_segment" not in runs[p["id"]].data.tags
    wait_until(
        lambda: (
            {r.info.status for r in runs_of(client, exp_name) if "phpo.segment_parent" in r.data.tags}
            == {"FINISHED"}
        ),
        30,
        "the parent runs to be FINISHED",
        server.log,
    )


BIG_AND_BAD = """\
import io, sys, tarfile
from phpo.evaluation_container import sdk

sys.stdout.write("y" * 40000 + "\\n")  # over the bridge's limit in this test
print("small", file=sys.stderr)
with tarfile.open("metrics.tgz", "w:gz") as t:  # an mlruns/ tarball that tries to escape
    for name in ("mlruns/0/meta.yaml", "../../escaped.txt"):
        info = tarfile.TarInfo(name)
        info.size = 2
        t.addfile(info, io.BytesIO(b"hi"))
sdk.report(1.0)
"""


def test_oversized_log_is_tagged_with_its_phpo_route_and_unsafe_tarball_is_refused(
    mlflow_server, start_server, agents, monkeypatch
):
    monkeypatch.setenv("PHPO_MLFLOW_MAX_ARTIFACT_MB", "0.02")  # ~20 KB, read by the server's bridge
    exp_name = f"user.test.limits.{uuid.uuid4().hex[:8]}"
    server = start_server(None, "--mlflow-uri", mlflow_server.uri)
    sb = sandbox_upload(server, {"train.py": BIG_AND_BAD})
    tid = submit(
        server,
        base_spec(
            f"{PY} train.py",
            sandbox=str(sb),
            outDS=exp_name,
            maxPoints=1,
            evaluationMetrics="metrics.tgz",
            searchSpace={"params": {"x": {"type": "int", "low": 0, "high": 0}}},
        ),
    )
    agent = agents(server)
    t = wait_task(server, tid, agents=(agent,), timeout=90)
    assert t["state"] == "finished", t
    arts = {
        a["name"].rsplit(".", 2)[-2] if a["kind"] == "log" else a["kind"]: a
        for a in get_artifacts(server, tid)
    }
    wait_until(lambda: len(_outbox(server, tid)) == 3, 60, "3 artifacts handled", server.log)
    rows = {r[0]: r for r in _outbox(server, tid)}
    assert rows[arts["stdout"]["id"]][2] == "skipped"
    assert rows[arts["stderr"]["id"]][2] == "done"
    assert (
        rows[arts["metrics"]["id"]][2] == "error" and "unsafe member name" in rows[arts["metrics"]["id"]][3]
    )

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    (run,) = runs_of(client, exp_name)
    rid = run.info.run_id
    assert [Path(a.path).name.split(".", 1)[1] for a in client.list_artifacts(rid, "logs")] == ["stderr.txt"]
    why = run.data.tags[f"phpo.artifact_skipped.{arts['stdout']['id']}"]
    route = f"/api/v1/artifacts/{arts['stdout']['id']}"
    assert route in why and "limit" in why
    with server.client() as c:  # the route in the tag serves the log
        assert c.get(route.removeprefix("/api/v1")).content == b"y" * 40000 + b"\n"
    assert "unsafe member name" in run.data.tags[f"phpo.artifact_error.{arts['metrics']['id']}"]


def _tar(path: Path, members: list[tuple[str, bytes | None, str]]) -> Path:
    """members: (name, data, type) with type file|dir|symlink (data = the link target for links)."""
    with tarfile.open(path, "w:gz") as t:
        for name, data, typ in members:
            info = tarfile.TarInfo(name)
            if typ == "dir":
                info.type = tarfile.DIRTYPE
                t.addfile(info)
            elif typ == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, data.decode()
                t.addfile(info)
            else:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return path


def test_extract_mlruns_takes_only_safe_regular_files_within_bounds(tmp_path):
    from phpo.server.services.mlflow_bridge import UnsafeTarball, extract_mlruns

    run = "out/mlruns/1/abc"
    ok = _tar(
        tmp_path / "ok.tgz",
        [
            ("out/mlruns/1/meta.yaml", b"e", "file"),
            (f"{run}/meta.yaml", b"r", "file"),
            (f"{run}/metrics/acc", b"1 0.5 0\n", "file"),
            (f"{run}/artifacts/model.bin", b"x" * 100, "file"),
            (f"{run}/tags/link", b"/etc/passwd", "symlink"),
            ("other/mlruns/2/meta.yaml", b"o", "file"),
            ("README", b"not mlruns", "file"),
        ],
    )
    root = extract_mlruns(ok, tmp_path / "x")
    assert root == tmp_path / "x" / "mlruns"
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink())
    # the first mlruns/ only (its runs' artifacts too), no links; the run's folders exist for MLflow's reader
    assert files == ["1/abc/artifacts/model.bin", "1/abc/meta.yaml", "1/abc/metrics/acc", "1/meta.yaml"]
    assert {p.name for p in (root / "1" / "abc").iterdir()} == {
        "meta.yaml",
        "metrics",
        "params",
        "tags",
        "artifacts",
    }
    assert extract_mlruns(_tar(tmp_path / "none.tgz", [("a/b.txt", b"x", "file")]), tmp_path / "y") is None
    for bad in ("../mlruns/0/meta.yaml", "/tmp/mlruns/0/meta.yaml", "mlruns/0/../../../escape"):
        with pytest.raises(UnsafeTarball, match="unsafe member name"):
            extract_mlruns(_tar(tmp_path / "bad.tgz", [(bad, b"x", "file")]), tmp_path / "z")
    assert not (tmp_path / "escape").exists()
    big = _tar(tmp_path / "big.tgz", [(f"mlruns/0/r/metrics/m{i}", b"0" * 1000, "file") for i in range(5)])
    with pytest.raises(UnsafeTarball, match="more than 3000 bytes"):
        extract_mlruns(big, tmp_path / "b", max_bytes=3000)
    with pytest.raises(UnsafeTarball, match="more than 4 members"):
        extract_mlruns(big, tmp_path / "c", max_members=4)


# --------------------------------------------------------------------------- the stock MLflow UI


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


def _headless(binary: str, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1400,900",
        "--virtual-time-budget=20000",
    ]
    return subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")  # session-scoped: set up before the session's MLflow server
def chromium() -> str:
    """The headless browser, or a visible skip (asked for before the MLflow server starts)."""
    binary = _chromium()
    if binary is None:
        msg = "SKIPPING MLFLOW UI TEST: no chromium binary (`make chromium` installs it on Debian as root)"
        print("\n" + msg, file=sys.stderr)
        pytest.skip(msg)
    return binary


def _page_text(binary: str, url: str) -> str:
    """What the page at ``url`` shows, as one line of text (the DOM after its scripts ran)."""
    dom = _headless(binary, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-3000:]
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom.stdout, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))


def _columns(text: str) -> set[str]:
    """The runs table's column headers (the words between "Duration" and the first row)."""
    m = re.search(r" Run Name Created (.*?) Hide run ", text)
    assert m, f"no runs table in the MLflow UI page:\n{text[:3000]}"
    return set(m.group(1).split())


def _assert_best_first(text: str, point_runs: list) -> None:
    """The point runs' names appear in the page in the order of their loss (best first)."""
    at = {}
    for r in point_runs:
        m = re.search(rf" {re.escape(r.info.run_name)} ", text)
        assert m, f"run {r.info.run_name} not in the MLflow UI page:\n{text[:3000]}"
        at[r.info.run_name] = m.start()
    shown = sorted(point_runs, key=lambda r: at[r.info.run_name])
    losses = [r.data.metrics["loss"] for r in shown]
    assert losses == sorted(losses), (
        f"runs not sorted by loss: {[(r.info.run_name, r.data.metrics['loss']) for r in shown]}"
    )


def test_dashboard_opens_the_runs_table_best_first_with_loss_and_params_in_headless_chromium(
    chromium, mlflow_server, start_server, agents, tmp_path
):
    """``phpo dashboard`` in the stock MLflow UI: the runs table sorted by loss, with the loss
    and the parameters as columns; a segmented task shows its point runs with their segment."""
    binary = chromium
    from conftest import run_phpo
    from PIL import Image

    exp_name = f"user.test.ui.{uuid.uuid4().hex[:8]}"
    # and a plain task beside it: loss (x-2)^2, so the best point is not the first one
    flat_name = f"user.test.ui.flat.{uuid.uuid4().hex[:8]}"
    payload = "from phpo.evaluation_container import sdk; x = sdk.load_point()['x']; sdk.report(float((x - 2) ** 2))"
    server, tid, flat = run_two_segments(
        mlflow_server,
        start_server,
        agents,
        exp_name,
        ("higgs", "ttbar"),
        also=base_spec(f'{PY} -c "{payload}"', outDS=flat_name, nParallelEvaluation=2),
    )
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    runs = wait_runs_done(client, exp_name, 4, diag=server.log)
    flat_runs = wait_runs_done(client, flat_name, 4, diag=server.log)
    env = {"PHPO_URL": server.url, "PHPO_TOKEN": server.user_token}

    url = run_phpo("dashboard", str(flat), "--mlflow-uri", mlflow_server.uri, env=env).stdout.strip()
    assert url.endswith("/runs?viewStateShareKey=phpo"), url
    text = _page_text(binary, url)
    assert flat_name in text and "Run Name" in text and "Sort: loss" in text, text[:3000]
    assert {"Metrics", "Parameters", "loss", "x"} <= _columns(text), text[:3000]
    assert re.search(r"\b4 matching runs\b", text), text[:3000]
    _assert_best_first(text, flat_runs)
    for r in flat_runs:  # each row shows its loss and its x
        x, loss = r.data.params["x"], f"{r.data.metrics['loss']:g}"
        assert f" {loss} {x} " in text or f" {x} {loss} " in text, f"point x={x} not shown:\n{text[:3000]}"

    url = run_phpo("dashboard", str(tid), "--mlflow-uri", mlflow_server.uri, env=env).stdout.strip()
    text = _page_text(binary, url)
    assert exp_name in text and "Sort: loss" in text, text[:3000]
    assert {"Tags", "phpo.segment", "loss", "x"} <= _columns(text), text[:3000]  # the segment is a column
    point_runs = [r for r in runs if "phpo.point_id" in r.data.tags]
    assert re.search(r"\b4 matching runs\b", text), text[:3000]  # the point runs, not the parent runs
    _assert_best_first(text, point_runs)
    for name in ("higgs", "ttbar"):
        assert f" {name} " in text, f"segment {name} not in the MLflow UI page:\n{text[:3000]}"

    shot = tmp_path / "mlflow-ui.png"
    got = _headless(binary, f"--screenshot={shot}", url)
    assert got.returncode == 0 and shot.exists(), got.stderr[-3000:]
    with Image.open(shot) as img:
        assert img.format == "PNG" and img.size == (1400, 900)
        colors = img.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colors is not None and len(colors) > 50, "the screenshot is (almost) blank"
    print(f"\nMLflow UI screenshot: {shot} ({shot.stat().st_size} bytes, {len(runs)} runs)")
