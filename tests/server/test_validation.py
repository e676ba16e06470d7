"""Bad input answers 4xx naming the field, and stores nothing."""

from __future__ import annotations

import hashlib

import httpx

from .helpers import acquire, spec, wait_until

BAD_TASKS = [
    # (what, spec overrides, expected field, words the message must contain)
    (
        "unknown method",
        {"searchSpace": {"lr": {"method": "logunif", "dimension": {"low": 1, "high": 2}}}},
        "searchSpace",
        ["lr", "logunif"],
    ),
    (
        "low > high",
        {"searchSpace": {"lr": {"method": "uniform", "dimension": {"low": 2, "high": 1}}}},
        "searchSpace",
        ["lr", "greater"],
    ),
    (
        "empty categorical",
        {"searchSpace": {"act": {"method": "categorical", "dimension": {"categories": []}}}},
        "searchSpace",
        ["act", "categories"],
    ),
    (
        "unknown type",
        {"searchSpace": {"n": {"type": "Integer", "params": {}}}},
        "searchSpace",
        ["n", "Integer"],
    ),
    ("unknown option", {"nParalelEvaluation": 4}, "nParalelEvaluation", ["unknown"]),
    ("wrong type", {"maxPoints": "ten"}, "maxPoints", ["integer"]),
    ("negative", {"nParallelEvaluation": 0}, "nParallelEvaluation", ["greater"]),
    ("missing exec", {"evaluationExec": None}, "evaluationExec", []),
    ("unknown optimizer", {"optimizer": "optuna.magic"}, "optimizer", ["optuna.magic"]),
    ("bad architecture", {"architecture": "#x86_64&nvidia:vram~~big"}, "architecture", ["vram"]),
    ("path escape", {"evaluationOutput": "../../etc/passwd"}, "evaluationOutput", ["relative"]),
    (
        "steering conflict",
        {"optimizer": "optuna.tpe", "steeringExec": "python s.py %IN %OUT"},
        "optimizer",
        [],
    ),
    ("sandbox not uploaded", {"sandbox": "12345"}, "sandbox", ["12345"]),
    (
        "segment list mismatch",
        {"searchSpace": [{"model_id": 0, "search_space": {"x": [0, 1]}}]},
        "searchSpace",
        ["segments"],
    ),
    # segmented HPO spec files (issue 6)
    (
        "duplicate segment names",
        {"segments": [{"name": "eta_0"}, {"name": "eta_0"}]},
        "segments",
        ["duplicate", "eta_0"],
    ),
    ("empty segment list", {"segments": []}, "segments", ["empty"]),
    (
        "model_ids do not match the segments",
        {
            "segments": [{"name": "a"}, {"name": "b"}],
            "searchSpace": [
                {"model_id": 0, "search_space": {"x": [0, 1]}},
                {"model_id": 5, "search_space": {"x": [0, 1]}},
            ],
        },
        "searchSpace",
        ["model_id", "'b'", "5"],
    ),
    ("bad segment name", {"segments": [{"name": "has space"}]}, "segments.0.name", []),
]


def _no_tasks(srv) -> None:
    with srv.client() as c:
        assert c.get("/tasks").json()["total"] == 0


def test_bad_task_specs_store_nothing(db_url, start_server):
    srv = start_server(db_url)
    with srv.client() as c:
        for what, over, field, words in BAD_TASKS:
            body = spec(**over)
            if body.get("evaluationExec") is None:
                body.pop("evaluationExec")
            r = c.post("/tasks", json=body)
            assert r.status_code == 422, (what, r.text)
            err = r.json()
            assert err["code"] == "validation_error", what
            assert err["field"] == field, (what, err)
            for w in words:
                assert w.lower() in err["message"].lower(), (what, err["message"])
        r = c.post("/tasks", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["field"] == "body"
    _no_tasks(srv)


def test_bad_agent_calls(db_url, start_server):
    srv = start_server(db_url)
    with srv.client(srv.agent_token) as a:
        r = a.post("/jobs/acquire", json={"agent": "", "site": "x"})
        assert r.status_code == 422 and r.json()["field"] == "agent"
        r = a.post("/jobs/acquire", json={"agent": "a", "site": "x", "kinds": ["training"]})
        assert r.status_code == 422 and r.json()["field"].startswith("kinds")
        r = a.post("/jobs/1/heartbeat", json={"colour": "red"})
        assert r.status_code == 422 and r.json()["field"] == "colour"
        assert a.post("/jobs/424242/heartbeat", json={}).status_code == 404
        r = a.post("/jobs/1/points/1/result", json={"point_id": 1, "loss": "nan-ish"})
        assert r.status_code == 422 and r.json()["field"] == "loss"
        r = a.post("/jobs/1/points/1/result", json={"point_id": 1, "loss": True})
        assert r.status_code == 422 and r.json()["field"] == "loss"
        r = a.put("/jobs/1/artifacts/movie", content=b"x")
        assert r.status_code == 422 and r.json()["field"] == "kind"


def test_oversized_uploads_refused_and_not_stored(start_server, tmp_path):
    art = tmp_path / "art"
    srv = start_server(None, "--max-upload-mb", "1", "--artifact-url", str(art))

    def stored() -> list:
        return [p for p in art.rglob("*") if p.is_file()]

    big = b"x" * (1024 * 1024 + 10)
    with srv.client() as c:
        # announced size (Content-Length) and streamed without one (chunked): both refused
        for body in (big, (big[i : i + 65536] for i in range(0, len(big), 65536))):
            r = c.put("/sandboxes", content=body)
            assert r.status_code == 413, r.text
            assert r.json()["code"] == "too_large" and "1 MB" in r.json()["message"]
            assert stored() == []
        # without a token nothing is stored either
        assert httpx.put(srv.url + "/api/v1/sandboxes", content=b"abc").status_code == 401
        assert stored() == []
        # a small one is kept, with its checksum, and comes back byte for byte
        r = c.put("/sandboxes", params={"name": "sb.tar.gz"}, content=b"hello sandbox")
        assert r.status_code == 201, r.text
        a = r.json()
        assert a["size"] == 13 and a["sha256"] == hashlib.sha256(b"hello sandbox").hexdigest()
        got = c.get(f"/artifacts/{a['id']}")
        assert got.status_code == 200 and got.content == b"hello sandbox"
        assert got.headers["x-checksum-sha256"] == a["sha256"]
        assert len(stored()) == 1
        # the id of an uploaded sandbox is accepted in a task spec, and handed to jobs
        r = c.post("/tasks", json=spec(sandbox=str(a["id"])))
        assert r.status_code == 201, r.text
    with srv.client(srv.agent_token) as ag:
        job = wait_until(lambda: acquire(ag), what="a job")
        assert job["evaluation"]["sandbox_artifact"] == a["id"]
        assert ag.get(f"/artifacts/{a['id']}").content == b"hello sandbox"
    # another user can neither download it nor use it
    with srv.client(srv.token("bob", "user")) as b:
        assert b.get(f"/artifacts/{a['id']}").status_code == 404
        assert b.post("/tasks", json=spec(sandbox=str(a["id"]))).json()["field"] == "sandbox"
