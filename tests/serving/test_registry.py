"""The best point's model registered in MLflow's model registry (real MLflow server, real phpo
server and agent; payloads call sdk.save_model or log an MLflow model themselves)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from agent.agent_helpers import PY, get_points, sandbox_upload, submit, wait_task, wait_until

from .payloads import NO_MODEL, OWN_MLFLOW, SKLEARN, TORCH

pytestmark = pytest.mark.slow

X12 = {"params": {"x": {"type": "int", "low": 1, "high": 2}}}  # grid: x=1 then x=2 (the best)


def spec(exec_: str, sb: int, out_ds: str, **kw) -> dict:
    return {
        "evaluationExec": exec_,
        "optimizer": "grid",
        "searchSpace": X12,
        "maxPoints": 2,
        "nParallelEvaluation": 2,
        "sandbox": str(sb),
        "outDS": out_ds,
        **kw,
    }


def models(server, tid: int) -> list[dict]:
    with server.client() as c:
        r = c.get(f"/tasks/{tid}/models")
        assert r.status_code == 200, r.text
        return r.json()


def wait_models(server, tid: int, timeout: float = 120) -> list[dict]:
    return wait_until(
        lambda: (ms := models(server, tid)) and all(m["status"] != "pending" for m in ms) and ms,
        timeout,
        f"task {tid}'s models decided",
        lambda: server.log()[-4000:],
    )


def run_task(server, body: dict) -> tuple[int, list[dict]]:
    tid = submit(server, body)
    t = wait_task(server, tid, timeout=240)
    assert t["state"] == "finished", t
    return tid, get_points(server, tid)


def load(mlflow_server, uri: str):
    """The registered model, in this process (what the service's answers are compared with);
    ``mlflow_server``: the fixture or its URL."""
    import mlflow
    import mlflow.pyfunc

    mlflow.set_tracking_uri(getattr(mlflow_server, "uri", mlflow_server))
    mlflow.set_registry_uri(getattr(mlflow_server, "uri", mlflow_server))
    return mlflow.pyfunc.load_model(uri)


def phpo_cli(server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "phpo.client.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PHPO_URL": server.url, "PHPO_TOKEN": server.user_token},
    )


def test_best_points_model_is_registered_one_version_per_task(stack, mlflow_server):
    out_ds = f"user.alice.torch/{uuid.uuid4().hex[:6]}:v1"  # '/' and ':' are not allowed in a model name
    name = out_ds.replace("/", "_").replace(":", "_")
    sb = sandbox_upload(stack, {"train.py": TORCH})
    tids = []
    for _ in range(2):  # two tasks of one outDS: versions 1 and 2 of one model
        tid, pts = run_task(stack, spec(f"{PY} train.py", sb, out_ds))
        best = next(p for p in pts if p["params"]["x"] == 2)
        [m] = wait_models(stack, tid)
        assert m["status"] == "registered", m
        assert (m["name"], m["point_id"], m["loss"]) == (name, best["id"], 0.0)
        tids.append((tid, m))
    assert [m["version"] for _, m in tids] == ["1", "2"]
    client = MlflowClient(tracking_uri=mlflow_server.uri, registry_uri=mlflow_server.uri)
    for tid, m in tids:
        mv = client.get_model_version(name, m["version"])
        assert m["uri"] == f"models:/{name}/{m['version']}"
        assert mv.tags["phpo.task_id"] == str(tid) and mv.tags["phpo.owner"] == "alice"
        assert mv.tags["param.x"] == "2" and json.loads(mv.tags["loss"]) == 0.0
        assert f"best point {m['point_id']}" in mv.description
        assert mv.run_id == m["run_id"]  # the best point's own run
    # the registered model is the best point's: its output is ~100*x = 200
    model = load(mlflow_server, tids[0][1]["uri"])
    out = model.predict(np.zeros((1, 5), dtype=np.float32))
    assert out.shape == (1, 2) and abs(out[0][0] - 200.0) < 1.0, out

    p = phpo_cli(stack, "best", str(tids[1][0]), "--model")
    assert p.returncode == 0, p.stderr
    assert f"model {name} version 2" in p.stdout and f"models:/{name}/2" in p.stdout, p.stdout
    p = phpo_cli(stack, "best", str(tids[1][0]), "--model", "--json")
    assert json.loads(p.stdout)["version"] == "2"


def test_segmented_task_registers_one_model_per_segment(stack, mlflow_server):
    out_ds = f"user.alice.seg.{uuid.uuid4().hex[:6]}"
    sb = sandbox_upload(stack, {"train.py": SKLEARN})
    segments = [{"name": n, "files": [f"/data/{n}.dat"]} for n in ("a", "b")]
    tid, pts = run_task(
        stack, spec(f"{PY} train.py %SEGMENT_NAME", sb, out_ds, segments=segments, nParallelEvaluation=1)
    )
    ms = wait_models(stack, tid)
    assert [(m["segment"], m["status"], m["name"], m["version"]) for m in ms] == [
        ("a", "registered", f"{out_ds}.a", "1"),
        ("b", "registered", f"{out_ds}.b", "1"),
    ]
    best = {p["segment_id"]: p["id"] for p in pts if p["params"]["x"] == 2}
    assert [m["point_id"] for m in ms] == [best[0], best[1]]
    p = phpo_cli(stack, "best", str(tid), "--model")
    assert p.returncode == 2 and "--segments" in p.stderr  # one model per segment: say which
    p = phpo_cli(stack, "best", str(tid), "--model", "--segments")
    assert p.returncode == 0 and f"{out_ds}.a version 1" in p.stdout and f"{out_ds}.b version 1" in p.stdout


def test_model_the_payload_logged_itself_is_registered_and_no_model_is_said(stack, mlflow_server):
    sb = sandbox_upload(stack, {"own.py": OWN_MLFLOW})
    tid, _ = run_task(stack, spec(f"{PY} own.py", sb, f"user.alice.own.{uuid.uuid4().hex[:6]}"))
    [m] = wait_models(stack, tid)
    assert m["status"] == "registered", m
    got = load(mlflow_server, m["uri"]).predict(np.arange(3.0).reshape(1, 3))
    assert abs(float(np.ravel(got)[0]) - 2.0) < 1e-6  # the x=2 point's regression: y = 2*f1

    tid, _ = run_task(stack, spec(f'{PY} -c "{NO_MODEL}"', sb, f"user.alice.none.{uuid.uuid4().hex[:6]}"))
    [m] = wait_models(stack, tid)
    assert m["status"] == "no_model" and "sdk.save_model" in m["detail"], m
    p = phpo_cli(stack, "best", str(tid), "--model")
    assert p.returncode == 1 and "no model" in p.stdout
