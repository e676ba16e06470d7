"""Hostile input against a real server (issue 16): every value a fuzzer or an attacker sends is
answered with a 4xx naming the field, nothing is stored, and the server stays responsive.

The server conftest checks that no server log holds a traceback (an unhandled error is a 500)."""

from __future__ import annotations

import json
import threading
import time

import httpx

from .helpers import acquire, create_task, points, spec, wait_until

BIG = 2**63  # one past the largest 64-bit id


def _leased_job(srv) -> tuple[dict, int]:
    with srv.client() as c:
        tid = create_task(c, maxPoints=2, nParallelEvaluation=1)["id"]
    with srv.client(srv.agent_token) as a:
        job = wait_until(lambda: acquire(a), what="a job")
    return job, tid


def _files(srv) -> list:
    root = srv.data_dir / "artifacts"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_ids_offsets_and_point_ids_beyond_64_bits_are_422(db_url, start_server):
    srv = start_server(db_url)
    job, tid = _leased_job(srv)
    pid = job["points"][0]["point_id"]
    user = [
        ("GET", f"/tasks/{BIG}", "task_id"),
        ("POST", f"/tasks/{BIG}/cancel", "task_id"),
        ("GET", "/tasks", "offset", {"offset": BIG}),
        ("GET", "/workflows", "offset", {"offset": BIG}),
        ("GET", f"/tasks/{tid}/iterations", "offset", {"offset": 10**30}),
        ("GET", f"/tasks/{tid}/points", "segment", {"segment": BIG}),
        ("GET", f"/tasks/{tid}/points", "segment", {"segment": 2**31}),  # a 32-bit column
        ("GET", f"/tasks/{tid}/best", "segment", {"segment": 2**31}),
        ("GET", f"/tasks/{tid}/artifacts", "point_id", {"point_id": BIG}),
        ("GET", f"/artifacts/{BIG}", "artifact_id"),
        ("POST", f"/workflows/{BIG}/cancel", "workflow_id"),
        ("GET", "/tasks", "limit", {"limit": 1001}),
    ]
    agent = [
        ("POST", f"/jobs/{BIG}/fail", "job_id", None, {"error": "x"}),
        ("POST", f"/jobs/{job['id']}/points/{BIG}/result", "point_id", None, {"point_id": pid}),
        ("PUT", f"/jobs/{job['id']}/artifacts/log", "point_id", {"point_id": BIG}, None),
    ]
    with srv.client() as c:
        for method, path, field, *params in user:
            r = c.request(method, path, params=params[0] if params else None)
            assert r.status_code == 422, (path, r.text)
            assert r.json()["field"] == field, (path, r.json())
        # the largest id is a plain "does not exist"
        assert c.get(f"/tasks/{BIG - 1}").status_code == 404
        assert c.get("/tasks", params={"offset": BIG - 1}).json()["items"] == []
    with srv.client(srv.agent_token) as a:
        for method, path, field, params, body in agent:
            r = (
                a.request(method, path, params=params, json=body)
                if body is not None
                else a.request(method, path, params=params, content=b"x")
            )
            assert r.status_code == 422 and r.json()["field"] == field, (path, r.text)


BAD_NAMES = [
    ("a\x00b.tar.gz", "U+0000"),
    ("line\r\nX-Evil: 1", "U+000D"),
    ("tab\there", "U+0009"),
    ("x" * 256, "256 characters"),
    ("y" * 501, "501 characters"),
    ("", "empty"),
]


def test_artifact_names_that_cannot_be_served_back_are_refused_and_nothing_is_stored(db_url, start_server):
    srv = start_server(db_url)
    job, _ = _leased_job(srv)
    for name, why in BAD_NAMES:
        with srv.client() as c:
            r = c.put("/sandboxes", params={"name": name}, content=b"payload")
            assert r.status_code == 422, r.text
            assert r.json()["field"] == "name" and why in r.json()["message"], r.json()
        with srv.client(srv.agent_token) as a:
            r = a.put(f"/jobs/{job['id']}/artifacts/log", params={"name": name}, content=b"payload")
            assert r.status_code == 422 and r.json()["field"] == "name", r.text
    assert _files(srv) == []  # no orphan file


def test_non_ascii_artifact_names_download_with_rfc5987_filename(db_url, start_server):
    srv = start_server(db_url)
    names = ["données-✓.tar.gz", "模型 \U0010fffd.tgz", 'quote"and\\back.tgz', "plain.tar.gz"]
    with srv.client() as c:
        for i, name in enumerate(names):
            body = f"content {i}".encode()
            r = c.put("/sandboxes", params={"name": name}, content=body)
            assert r.status_code == 201 and r.json()["name"] == name, r.text
            d = c.get(f"/artifacts/{r.json()['id']}")
            assert d.status_code == 200 and d.content == body, d.text
            cd = d.headers["content-disposition"]
            if name == "plain.tar.gz":
                assert cd == 'attachment; filename="plain.tar.gz"'
                continue
            fallback, star = cd.split("; filename*=")
            assert fallback.startswith('attachment; filename="') and fallback.isascii()
            assert star.startswith("UTF-8''")
            from urllib.parse import unquote

            assert unquote(star[len("UTF-8''") :]) == name


def test_nan_infinity_and_huge_floats_are_422_naming_the_field_and_nothing_is_stored(db_url, start_server):
    srv = start_server(db_url)
    job, tid = _leased_job(srv)
    pid = job["points"][0]["point_id"]
    hb = f"/jobs/{job['id']}/heartbeat"
    raw = {"content-type": "application/json"}
    beat = '{"intermediate": [{"point_id": PID, "step": 1, "value": VALUE}]}'
    cases = [
        (hb, beat.replace("VALUE", v), "intermediate.0.value") for v in ("NaN", "-Infinity", "1e999", '"NaN"')
    ]
    cases += [
        (
            f"/jobs/{job['id']}/points/{pid}/result",
            '{"point_id": PID, "loss": 0.5, "metrics": {"acc": [1, Infinity]}}',
            "metrics.acc.1",
        ),
        (
            f"/jobs/{job['id']}/complete",
            '{"results": [{"point_id": PID, "loss": 0.5, "metrics": {"a": NaN}}]}',
            "results.0.metrics.a",
        ),
    ]
    cases = [(path, body.replace("PID", str(pid)), field) for path, body, field in cases]
    with srv.client(srv.agent_token) as a:
        for path, body, field in cases:
            r = a.post(path, content=body, headers=raw)
            assert r.status_code == 422, (body, r.text)
            assert r.json()["field"] == field and field in r.json()["message"], (body, r.json())
    with srv.client() as c:
        for over, field in [
            ({"penaltyLoss": "NaN"}, "penaltyLoss"),
            ({"evaluationTimeout": "Infinity"}, "evaluationTimeout"),
        ]:
            r = c.post("/tasks", json=spec(**over))
            assert r.status_code == 422 and r.json()["field"] == field, r.text
        r = c.post("/tasks", content=json.dumps(spec(penaltyLoss=float("nan"))), headers=raw)
        assert r.status_code == 422 and r.json()["field"] == "penaltyLoss", r.text
        r = c.post(
            "/tasks",
            content=json.dumps(
                spec(searchSpace={"x": {"type": "categorical", "choices": [1, float("inf")]}})
            ),
            headers=raw,
        )
        assert r.status_code == 422 and r.json()["field"] == "searchSpace.x.choices.1", r.text
        pts = points(c, tid)
        assert all(p["intermediate"] == [] and p["state"] != "evaluated" for p in pts), pts
        assert c.get("/tasks", params={"limit": 100}).json()["total"] == 1
    # what the agent sends instead: null, which is kept as null
    with srv.client(srv.agent_token) as a:
        r = a.post(
            hb,
            json={
                "intermediate": [
                    {"point_id": pid, "step": 1, "value": None},
                    {"point_id": pid, "step": 2, "value": 0.5},
                ]
            },
        )
        assert r.status_code == 200, r.text
        r = a.post(
            f"/jobs/{job['id']}/points/{pid}/result",
            json={"point_id": pid, "loss": 0.25, "metrics": {"acc": None}},
        )
        assert r.status_code == 200, r.text
    with srv.client() as c:
        p = next(p for p in points(c, tid) if p["id"] == pid)
        assert p["intermediate"] == [{"step": 1, "value": None}, {"step": 2, "value": 0.5}]
        assert p["metrics"] == {"acc": None} and p["loss"] == 0.25


def _nested(depth: int) -> dict:
    v: dict = {}
    for _ in range(depth - 1):
        v = {"a": v}
    return v


def test_json_nested_too_deep_is_refused_and_the_point_list_keeps_working(db_url, start_server):
    srv = start_server(db_url)
    job, tid = _leased_job(srv)
    pid = job["points"][0]["point_id"]
    with srv.client(srv.agent_token) as a:
        r = a.post(
            f"/jobs/{job['id']}/points/{pid}/result",
            json={"point_id": pid, "loss": 1.0, "metrics": _nested(256)},
        )
        assert r.status_code == 422 and r.json()["field"] == "body", r.text
        assert "levels deep; at most 64" in r.json()["message"], r.json()
        # brackets inside strings do not count
        r = a.post(
            f"/jobs/{job['id']}/points/{pid}/result",
            json={"point_id": pid, "loss": 1.0, "metrics": {"s": "[" * 500, "d": _nested(60)}},
        )
        assert r.status_code == 200, r.text
    with srv.client() as c:
        r = c.get(f"/tasks/{tid}/points")
        assert r.status_code == 200, r.text
        assert next(p for p in r.json()["items"] if p["id"] == pid)["metrics"]["s"] == "[" * 500


def test_bodies_over_the_route_limit_are_413_naming_it_and_uploads_have_their_own(start_server):
    srv = start_server(None, "--max-body-mb", "0.25", "--max-upload-mb", "1")
    big = spec(optimizerOptions={"pad": "x" * 300_000})
    with srv.client() as c:
        r = c.post("/tasks", json=big)
        assert r.status_code == 413, r.text
        e = r.json()
        assert e["code"] == "too_large" and e["field"] == "body"
        assert "262,144 bytes" in e["message"] and "--max-body-mb" in e["message"], e
        # without a Content-Length (chunked), counted while reading
        body = json.dumps(big).encode()
        r = c.post(
            "/tasks",
            content=iter([body[i : i + 65536] for i in range(0, len(body), 65536)]),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 413 and "262,144 bytes" in r.json()["message"], r.text
        assert c.get("/tasks").json()["total"] == 0
        # an upload larger than the JSON limit is fine, up to its own limit
        r = c.put("/sandboxes", content=b"s" * 600_000)
        assert r.status_code == 201, r.text
        r = c.put("/sandboxes", content=b"s" * 1_100_000)
        assert r.status_code == 413 and "--max-upload-mb" in r.json()["message"], r.text


class _HealthProbe(threading.Thread):
    """Polls /health while something else runs; keeps the slowest answer."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.stop, self.worst = url, threading.Event(), 0.0

    def run(self) -> None:
        with httpx.Client(timeout=30) as h:
            while not self.stop.is_set():
                t0 = time.monotonic()
                assert h.get(self.url + "/api/v1/health").status_code == 200
                self.worst = max(self.worst, time.monotonic() - t0)
                time.sleep(0.02)


def test_huge_search_spaces_are_answered_at_once_while_health_stays_responsive(start_server):
    srv = start_server()
    probe = _HealthProbe(srv.url)
    probe.start()
    try:
        with srv.client() as c:
            cases = [
                (
                    {"c": {"method": "categorical", "dimension": {"categories": list(range(30_000))}}},
                    422,
                    "30000 choices; at most 10000",
                ),
                ({"c": {"type": "categorical", "choices": list(range(1_000_000))}}, 422, "1000000 choices"),
                ({f"p{i}": [0.0, 1.0] for i in range(1001)}, 422, "1001 parameters; at most 1000"),
                ({"c": {"type": "Choice", "params": {"choices": list(range(10_000))}}}, 201, None),
            ]
            for space, status, text in cases:
                t0 = time.monotonic()
                r = c.post("/tasks", json=spec(searchSpace=space))
                took = time.monotonic() - t0
                assert r.status_code == status, r.text[:500]
                # "at once": seconds, not the minutes an unbounded check took; 1.05 s was seen for the
                # 7.9 MB body with the whole suite running in three workers on two cores
                assert took < 3.0, f"{len(json.dumps(space))} bytes answered in {took:.2f} s"
                if text:
                    assert r.json()["field"] == "searchSpace" and text in r.json()["message"], r.json()
    finally:
        probe.stop.set()
        probe.join()
    # the unbounded check held every other request for minutes; 0.56 s was seen with the whole
    # suite on two cores (CI), so the bound is the same "seconds, not minutes" as the answers'
    assert probe.worst < 3.0, f"/health took {probe.worst:.2f} s while the spaces were checked"
