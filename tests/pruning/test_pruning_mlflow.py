"""Pruning with the payload's own MLflow metric (``intermediateMetric``) and a real MLflow
server: the payload never talks to phpo (it logs ``val_loss`` with MLflow and writes its
output), the agent reads the metric from the payload's ./mlruns, the median pruner stops the
hopeless points, the agent ends them, and their MLflow runs end KILLED with ``phpo.pruned``."""

from __future__ import annotations

import uuid

import pytest

from tests.agent.agent_helpers import PY, base_spec, get_points, sandbox_upload, submit, wait_task
from tests.mlflow.test_mlflow_bridge import (
    MlflowClient,
    wait_runs_done,
)  # the mlflow_server and agents fixtures: tests/mlflow_fixtures.py

pytestmark = pytest.mark.slow

OWN_METRIC = """\
import json, time, mlflow
p = json.load(open("input.json"))
for epoch in range(30):
    time.sleep(0.4)
    mlflow.log_metric("val_loss", p["x"] + 1.0 / (epoch + 1), step=epoch)
json.dump({"status": 0, "loss": p["x"] + 1.0 / 30}, open("output.json", "w"))
"""


def test_own_mlflow_metric_prunes_and_runs_end_killed_with_a_tag(mlflow_server, start_server, agents):  # noqa: F811
    exp_name = f"user.test.prune.{uuid.uuid4().hex[:8]}"
    server = start_server(None, "--mlflow-uri", mlflow_server.uri, "--lease-seconds", "1.5")
    sb = sandbox_upload(server, {"train.py": OWN_METRIC})
    tid = submit(
        server,
        base_spec(
            f"{PY} train.py",
            sandbox=str(sb),
            outDS=exp_name,
            maxPoints=4,
            searchSpace={"params": {"x": {"type": "int", "low": 0, "high": 3}}},
            pruner="median",
            prunerOptions={"n_startup_trials": 2},
            intermediateMetric="val_loss",
        ),
    )
    agent = agents(server)
    t = wait_task(server, tid, agents=(agent,), timeout=150)
    assert t["state"] == "finished", t
    pts = {p["params"]["x"]: p for p in get_points(server, tid)}
    assert [pts[x]["state"] for x in range(4)] == ["evaluated", "evaluated", "pruned", "pruned"], pts
    assert max(r["step"] for r in pts[3]["intermediate"]) < 29  # stopped, not run to its end
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    runs = {
        int(r.data.tags["phpo.point_id"]): r for r in wait_runs_done(client, exp_name, 2, diag=server.log)
    }

    def ended():
        got = {int(r.data.tags["phpo.point_id"]): r for r in wait_runs_done(client, exp_name, 2)}
        return (
            all(
                got.get(pts[x]["id"]) is not None
                and got[pts[x]["id"]].info.status in ("FINISHED", "KILLED")
                and "phpo.state" in got[pts[x]["id"]].data.tags
                for x in range(4)
            )
            and got
        )

    from tests.agent.agent_helpers import wait_until

    runs = wait_until(ended, 60, "all four runs ended", server.log)
    for x in (0, 1):
        assert runs[pts[x]["id"]].info.status == "FINISHED"
        assert "phpo.pruned" not in runs[pts[x]["id"]].data.tags
    for x in (2, 3):
        r = runs[pts[x]["id"]]
        assert r.info.status == "KILLED" and r.data.tags["phpo.pruned"] == "true", r
        assert r.data.tags["phpo.state"] == "pruned"
