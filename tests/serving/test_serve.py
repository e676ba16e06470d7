"""``phpo serve`` as a real process (uvicorn, two workers) serving the models a real HPO task and
a real segmented task registered in a real MLflow server; tokens checked at the real phpo server."""

from __future__ import annotations

import io
import re
import tarfile
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from agent.agent_helpers import PY, sandbox_upload

from .payloads import SKLEARN, TORCH
from .test_registry import load, run_task, spec, wait_models

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(stack, serve, mlflow_server):
    """A torch task and a two-segment scikit-learn task of alice, and one service serving all
    three models (workers 2, a batch window long enough that concurrent calls meet in it)."""
    sb = sandbox_upload(
        stack, {"nn_train.py": TORCH, "sk_train.py": SKLEARN}
    )  # not torch.py: it would shadow torch
    t1, _ = run_task(stack, spec(f"{PY} nn_train.py", sb, f"user.alice.nn.{uuid.uuid4().hex[:6]}"))
    segments = [{"name": n, "files": [f"/data/{n}.dat"]} for n in ("a", "b")]
    t2, _ = run_task(
        stack,
        spec(
            f"{PY} sk_train.py %SEGMENT_NAME",
            sb,
            f"user.alice.sk.{uuid.uuid4().hex[:6]}",
            segments=segments,
            nParallelEvaluation=1,
        ),
    )
    ms = wait_models(stack, t1) + wait_models(stack, t2)
    assert [m["status"] for m in ms] == ["registered"] * 3, ms
    svc = serve("--task", str(t1), "--task", str(t2), "--workers", "2", "--batch-window-ms", "50")
    with svc.http(stack.user_token) as c:
        r = c.get("/health")
        assert sorted(r.json()["models"]) == sorted(f"{m['name']}:{m['version']}" for m in ms), svc.log()
    return svc, ms


def _predict(c, m, rows):
    return c.post(f"/v1/models/{m['name']}/{m['version']}/predict", json={"inputs": rows})


def test_every_segments_model_is_served_and_answers_as_the_model_in_process(stack, served, mlflow_server):
    svc, ms = served
    rng = np.random.default_rng(1)
    with svc.http(stack.user_token) as c:
        listed = {(m["name"], m["version"]) for m in c.get("/v1/models").json()["models"]}
        assert listed == {(m["name"], m["version"]) for m in ms}
        for m in ms:
            info = c.get(f"/v1/models/{m['name']}/{m['version']}").json()
            assert (
                info["owner"] == "alice"
                and info["point_id"] == m["point_id"]
                and info["params"] == {"x": "2"}
            )
            n = info["features"]
            assert n == (5 if ".nn." in m["name"] else 3) and info["dtype"] == "float32"
            rows = rng.random((7, n)).astype(np.float32)
            r = _predict(c, m, rows.tolist())
            assert r.status_code == 200, r.text
            got = np.asarray(r.json()["predictions"])
            want = np.asarray(load(mlflow_server, m["uri"]).predict(rows))
            assert got.shape == want.shape and np.allclose(got, want, rtol=1e-5, atol=1e-5)
        # the two segments are two models: y = 2*f0 and y = -2*f0
        a, b = ms[1], ms[2]
        one = [[0.5, 0.0, 0.0]]
        ya, yb = (_predict(c, m, one).json()["predictions"][0] for m in (a, b))
        assert abs(ya - 1.0) < 1e-4 and abs(yb + 1.0) < 1e-4
        # TFaaS's own form: one vector, its keys, the model by name (its latest version here)
        r = c.post("/json", json={"model": a["name"], "keys": ["f0", "f1", "f2"], "values": [0.5, 0.0, 0.0]})
        assert r.status_code == 200 and abs(r.json()["predictions"][0] - 1.0) < 1e-4


@pytest.mark.parametrize(
    "body,field,fragment",
    [
        ({"inputs": [[0.1] * 5, [0.1] * 4]}, "inputs[1]", "has 4 features; the model takes 5"),
        ({"inputs": [[0.1, 0.2, "x", 0.3, 0.4]]}, "inputs[0][2]", "must be a finite number"),
        ({"inputs": [[0.1, True, 0.2, 0.3, 0.4]]}, "inputs[0][1]", "bool"),
        ({"inputs": [0.1, 0.2]}, "inputs", "has 2 features"),
        ({"inputs": []}, "inputs", "non-empty"),
        ({"rows": [[1.0] * 5]}, "inputs", '"inputs"'),
        ({"keys": ["a", "b"], "values": [1.0] * 5}, "keys", "names 2 features"),
    ],
)
def test_wrong_shape_or_type_is_a_422_naming_the_field(stack, served, body, field, fragment):
    svc, ms = served
    with svc.http(stack.user_token) as c:
        r = (
            _predict(c, ms[0], None)
            if body is None
            else c.post(f"/v1/models/{ms[0]['name']}/{ms[0]['version']}/predict", json=body)
        )
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and fragment in r.json()["message"], r.json()


def test_unknown_model_missing_token_agent_and_other_users_are_refused(stack, served):
    svc, ms = served
    m = ms[0]
    row = {"inputs": [[0.0] * 5]}
    with svc.http(stack.user_token) as c:
        r = c.post("/v1/models/nobody.model/1/predict", json=row)
        assert r.status_code == 404 and r.json()["field"] == "name" and m["name"] in r.json()["message"]
        r = c.post(f"/v1/models/{m['name']}/{m['version']}/predict", content=b"{not json")
        assert r.status_code == 422 and r.json()["field"] == "body"
    with svc.http(None) as c:
        r = c.post(f"/v1/models/{m['name']}/{m['version']}/predict", json=row)
        assert r.status_code == 401 and r.json()["field"] == "Authorization"
    with svc.http("phpo_not-a-token") as c:
        assert c.get("/v1/models").status_code == 401
    with svc.http(stack.agent_token) as c:
        r = c.get("/v1/models")
        assert r.status_code == 403 and "role 'agent'" in r.json()["message"]
    with svc.http(stack.token("bob", "user")) as c:  # another user: sees none of alice's models
        assert c.get("/v1/models").json()["models"] == []
        r = c.post(f"/v1/models/{m['name']}/{m['version']}/predict", json=row)
        assert r.status_code == 403 and "belongs to alice" in r.json()["message"]
        r = c.post("/v1/models", json={"name": m["name"], "version": m["version"]})
        assert r.status_code == 403
    with svc.http(stack.admin_token) as c:  # admins see every model
        assert len(c.get("/v1/models").json()["models"]) == 3
        assert _predict(c, m, [[0.0] * 5]).status_code == 200


def test_concurrent_callers_are_batched_and_each_gets_its_own_rows(stack, served, mlflow_server):
    svc, ms = served
    m = ms[0]
    model = load(mlflow_server, m["uri"])
    rng = np.random.default_rng(2)
    batches = [rng.random((1 + i % 3, 5)).astype(np.float32) for i in range(48)]
    before = _metric(svc, "phpo_serve_batch_requests_count", m)

    def call(rows):
        with svc.http(stack.user_token) as c:
            r = _predict(c, m, rows.tolist())
            assert r.status_code == 200, r.text
            return np.asarray(r.json()["predictions"])

    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(call, batches))
    for rows, got in zip(batches, answers, strict=True):
        assert got.shape == (len(rows), 2) and np.allclose(got, model.predict(rows), atol=1e-5)
    calls = _metric(svc, "phpo_serve_batch_requests_count", m) - before
    requests = _metric(svc, "phpo_serve_batch_requests_sum", m)
    assert requests >= 48 and calls < 48, (calls, requests)  # concurrent requests shared calls of the model


def _metric(svc, name: str, m: dict) -> float:
    with svc.http(None) as c:
        text = c.get("/metrics").text
    key = f"{m['name']}:{m['version']}"
    got = re.findall(rf'^{name}{{model="{re.escape(key)}"}} ([0-9.e+]+)$', text, re.M)
    return float(got[0]) if got else 0.0


def test_name_or_upload_a_model_while_running(stack, served, tmp_path):
    import mlflow.sklearn
    from sklearn.linear_model import LinearRegression

    svc, ms = served
    X = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 3.0], [3.0, 1.0]])
    folder = tmp_path / "m"
    mlflow.sklearn.save_model(
        LinearRegression().fit(X, 3 * X[:, 0]),
        str(folder),
        pip_requirements=[],
        signature=mlflow.models.infer_signature(X.astype(np.float32)),
    )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        t.add(folder, arcname="m")
    with svc.http(stack.user_token) as c:
        r = c.put("/v1/models/alice-upload", content=buf.getvalue())
        assert r.status_code == 201, r.text
        assert (r.json()["version"], r.json()["owner"], r.json()["features"]) == ("1", "alice", 2)
        # every worker serves it (the catalogue is shared): several calls, all answered
        for _ in range(6):
            r = c.post("/v1/models/alice-upload/predict", json={"inputs": [[2.0, 0.0]]})
            assert r.status_code == 200 and abs(r.json()["predictions"][0] - 6.0) < 1e-6, r.text
        r = c.put("/v1/models/alice-upload", content=b"not a tarball")
        assert r.status_code == 422 and r.json()["field"] == "body"
        r = c.put(f"/v1/models/{ms[0]['name']}", content=buf.getvalue())
        assert r.status_code == 409 and r.json()["field"] == "name"  # a registry model's name
        r = c.post("/v1/models", json={"name": ms[0]["name"], "version": "x"})
        assert r.status_code == 422 and r.json()["field"] == "version"
        r = c.post("/v1/models", json={"name": ms[0]["name"], "version": 99})
        assert r.status_code == 404 and r.json()["field"] == "name"
    with svc.http(stack.token("bob", "user")) as c:
        r = c.post("/v1/models/alice-upload/predict", json={"inputs": [[2.0, 0.0]]})
        assert r.status_code == 403


def test_health_and_prometheus_metrics(stack, served):
    svc, ms = served
    with svc.http(stack.user_token) as c:
        assert _predict(c, ms[0], [[1.0]]).status_code == 422  # counted under its code
    with svc.http(None) as c:
        h = c.get("/health").json()
        text = c.get("/metrics").text
    assert h["status"] == "ok" and h["waiting_for"] == []
    assert "# TYPE phpo_serve_request_seconds histogram" in text
    assert re.search(r'^phpo_serve_requests_total\{code="422",model="[^"]+"\} [1-9]', text, re.M), text[:2000]


def test_workers_keep_their_libraries_and_models_out_of_full_collections(stack, served):
    """A worker's heap (torch, MLflow, the loaded model: hundreds of thousands of objects) is
    frozen out of Python's full garbage collections once started and after each model load.
    Without it a worker under load paused ~100 ms twice a second in gen-2 collections, which was
    the p99 of the batching service (benchmarks/README.md, Serving)."""
    svc, ms = served
    m = ms[0]
    with svc.http(stack.user_token) as c:
        n = c.get(f"/v1/models/{m['name']}/{m['version']}").json()["features"]
        for _ in range(8):  # every worker past its first model load
            r = _predict(c, m, [[1.0] * n])
            assert r.status_code == 200, r.text
    with svc.http(None) as c:
        text = c.get("/metrics").text
    frozen = re.findall(r"^phpo_serve_gc_frozen_objects ([0-9.e+]+)$", text, re.M)
    assert frozen and float(frozen[0]) > 50_000, text[-3000:]
    assert "# TYPE phpo_serve_gc_pause_seconds histogram" in text
