"""Workflow node kind ``serve``: a DAG that ends with a served model (real server, agent, MLflow
and ``phpo serve --workflow``); bad serve nodes refused with a 4xx naming the field."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

from agent.agent_helpers import PY, sandbox_upload, wait_until

from .payloads import TORCH
from .test_registry import X12, load

pytestmark = pytest.mark.slow


def submit_wf(stack, definition: dict):
    with stack.client() as c:
        return c.post("/workflows", json={"definition": definition})


@pytest.mark.parametrize(
    "node,field,fragment",
    [
        ({"name": "s", "kind": "serve"}, "nodes.s.task", "either 'task'"),
        ({"name": "s", "kind": "serve", "task": 1, "model": "m:1"}, "nodes.s.task", "not both"),
        ({"name": "s", "kind": "serve", "model": "no-version"}, "nodes.s.model", "NAME:VERSION"),
        ({"name": "s", "kind": "serve", "task": 0}, "nodes.s.task", "a task id"),
        (
            {"name": "s", "kind": "serve", "task": "${{ nodes.nope.task_id }}"},
            "nodes.s.task",
            "unknown node 'nope'",
        ),
        ({"name": "s", "kind": "serve", "task": 3, "timeout": -1}, "nodes.s.timeout", "greater than 0"),
        ({"name": "s", "kind": "serve", "task": 3, "port": 80}, "nodes.s.port", "unknown field"),
    ],
)
def test_bad_serve_nodes_are_refused_naming_the_field(stack, node, field, fragment):
    before = _count(stack)
    r = submit_wf(stack, {"name": "bad", "nodes": [node]})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and fragment in r.json()["message"], r.json()
    assert _count(stack) == before  # nothing stored


def wait_workflow(stack, wid: int, timeout: float) -> dict:
    """The workflow once it has ended."""

    def ended():
        with stack.client() as c:
            r = c.get(f"/workflows/{wid}")
        assert r.status_code == 200, r.text
        wf = r.json()
        return wf if wf["state"] in ("succeeded", "failed", "cancelled") else None

    return wait_until(ended, timeout, f"workflow {wid} to end", lambda: stack.log()[-3000:])


def _count(stack) -> int:
    with stack.client() as c:
        return c.get("/workflows").json()["total"]


def test_dag_ends_with_a_served_model(stack, serve, mlflow_server):
    sb = sandbox_upload(stack, {"nn_train.py": TORCH})
    out_ds = f"user.alice.wf.{uuid.uuid4().hex[:6]}"
    definition = {
        "name": "hpo-then-serve",
        "sandbox": str(sb),
        "nodes": [
            {
                "name": "search",
                "kind": "hpo",
                "spec": {
                    "evaluationExec": f"{PY} nn_train.py",
                    "optimizer": "grid",
                    "searchSpace": X12,
                    "maxPoints": 2,
                    "nParallelEvaluation": 2,
                    "outDS": out_ds,
                },
            },
            {"name": "deploy", "kind": "serve", "task": "${{ nodes.search.task_id }}"},
        ],
        "outputs": {"model": "${{ nodes.deploy.uri }}"},
    }
    r = submit_wf(stack, definition)
    assert r.status_code == 201, r.text
    wid = r.json()["id"]
    svc = serve("--workflow", str(wid), token=stack.user_token)  # started before the model exists

    wf = wait_workflow(stack, wid, 300)
    assert wf["state"] == "succeeded", wf
    node = next(n for n in wf["nodes"] if n["name"] == "deploy")
    assert node["kind"] == "serve" and node["results"]["name"] == out_ds and node["results"]["version"] == "1"
    assert wf["outputs"] == {"model": f"models:/{out_ds}/1"}
    # the service took it once the node was done
    deadline = time.monotonic() + 60
    with svc.http(stack.user_token) as c:
        while time.monotonic() < deadline and f"{out_ds}:1" not in c.get("/health").json()["models"]:
            time.sleep(0.5)
        rows = np.random.default_rng(3).random((3, 5)).astype(np.float32)
        r = c.post(f"/v1/models/{out_ds}/1/predict", json={"inputs": rows.tolist()})
        assert r.status_code == 200, svc.log()[-3000:]
    want = load(mlflow_server, f"models:/{out_ds}/1").predict(rows)
    assert np.allclose(np.asarray(r.json()["predictions"]), want, atol=1e-5)


def test_serve_node_fails_honestly_when_the_task_saved_no_model(stack):
    sb = sandbox_upload(stack, {"none.py": "from phpo.evaluation_container import sdk; sdk.report(1.0)"})
    r = submit_wf(
        stack,
        {
            "name": "no-model",
            "sandbox": str(sb),
            "nodes": [
                {"name": "run", "kind": "job", "exec": f"{PY} none.py"},
                {"name": "deploy", "kind": "serve", "task": "${{ nodes.run.task_id }}"},
            ],
        },
    )
    assert r.status_code == 201, r.text
    wid = r.json()["id"]

    wf = wait_workflow(stack, wid, 240)
    assert wf["state"] == "failed"
    node = next(n for n in wf["nodes"] if n["name"] == "deploy")
    assert node["state"] == "failed" and "sdk.save_model" in node["message"], node
