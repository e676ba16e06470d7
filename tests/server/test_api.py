"""The REST API on a real server process, once on SQLite and once on PostgreSQL."""

from __future__ import annotations

import httpx

from .helpers import create_task, points, spec, task, wait_until


def test_health_me_tokens(db_url, start_server):
    srv = start_server(db_url)
    r = httpx.get(srv.url + "/api/v1/health")
    assert r.status_code == 200
    assert r.json()["database"] == ("sqlite" if db_url.startswith("sqlite") else "postgresql")
    # start-up's objects are frozen out of full garbage collections (~55 ms pauses under load before)
    assert r.json()["gc_frozen_objects"] > 50_000, r.json()
    with srv.client() as c:
        assert c.get("/me").json() == {"name": "alice", "role": "user"}
        # only admins make tokens
        r = c.post("/tokens", json={"name": "bob", "role": "user"})
        assert r.status_code == 403 and r.json()["code"] == "forbidden"
    with srv.client(srv.admin_token) as a:
        r = a.post("/tokens", json={"name": "bob", "role": "user"})
        assert r.status_code == 201, r.text
        bob = r.json()["token"]
        r = a.post("/tokens", json={"name": "eve", "role": "superuser"})
        assert r.status_code == 422 and r.json()["field"] == "role"
    with srv.client(bob) as b:
        assert b.get("/me").json() == {"name": "bob", "role": "user"}
    # no token, a wrong token
    assert httpx.get(srv.url + "/api/v1/me").status_code == 401
    r = httpx.get(srv.url + "/api/v1/me", headers={"Authorization": "Bearer phpo_nope"})
    assert r.status_code == 401 and r.json()["code"] == "unauthorized"
    # unknown routes answer with an ErrorBody too
    r = httpx.get(srv.url + "/api/v1/nothing-here")
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    # OpenAPI is served
    assert "/api/v1/tasks" in httpx.get(srv.url + "/api/v1/openapi.json").json()["paths"]


def test_task_crud_paging_filters(db_url, start_server):
    srv = start_server(db_url)
    with srv.client() as c:
        ids = [
            create_task(c, outDS=f"user.alice.t{i}", maxPoints=2, nParallelEvaluation=2)["id"]
            for i in range(5)
        ]
        t = task(c, ids[0])
        assert t["owner"] == "alice" and t["name"] == "user.alice.t0"
        assert t["spec"]["maxPoints"] == 2 and t["state"] in ("running", "submitted")
        # paging: newest first by default
        p1 = c.get("/tasks", params={"limit": 2}).json()
        p2 = c.get("/tasks", params={"limit": 2, "offset": 2}).json()
        p3 = c.get("/tasks", params={"limit": 2, "offset": 4}).json()
        assert p1["total"] == 5 and len(p1["items"]) == 2 and len(p3["items"]) == 1
        seen = [x["id"] for x in p1["items"] + p2["items"] + p3["items"]]
        assert seen == sorted(ids, reverse=True)
        assert [x["id"] for x in c.get("/tasks", params={"sort": "id"}).json()["items"]] == ids
        # filters
        assert c.get("/tasks", params={"name": "user.alice.t3"}).json()["total"] == 1
        assert c.get("/tasks", params={"name": "user.alice.*"}).json()["total"] == 5
        r = c.post(f"/tasks/{ids[1]}/cancel")
        assert r.status_code == 200 and r.json()["state"] == "cancelled"
        assert [x["id"] for x in c.get("/tasks", params={"state": "cancelled"}).json()["items"]] == [ids[1]]
        assert c.get("/tasks", params={"state": "running,cancelled"}).json()["total"] == 5
        r = c.get("/tasks", params={"state": "sleeping"})
        assert r.status_code == 422 and r.json()["field"] == "state"
        r = c.get("/tasks", params={"limit": 0})
        assert r.status_code == 422 and r.json()["field"] == "limit"
        r = c.get("/tasks", params={"sort": "colour"})
        assert r.status_code == 422 and r.json()["field"] == "sort"
        # points and segments of a task (the manager fills 2 points)
        wait_until(lambda: len(points(c, ids[0])) == 2, what="2 points generated")
        pts = points(c, ids[0])
        assert [p["serial"] for p in pts] == [0, 1] and all(p["state"] == "ready" for p in pts)
        page = c.get(f"/tasks/{ids[0]}/points", params={"limit": 1, "offset": 1, "sort": "-serial"}).json()
        assert page["total"] == 2 and page["items"][0]["serial"] == 0
        assert c.get(f"/tasks/{ids[0]}/points", params={"state": "evaluated"}).json()["total"] == 0
        assert c.get(f"/tasks/{ids[0]}/points", params={"segment": 0}).json()["total"] == 2
        r = c.get(f"/tasks/{ids[0]}/points", params={"state": "done"})
        assert r.status_code == 422 and r.json()["field"] == "state"
        segs = c.get(f"/tasks/{ids[0]}/segments").json()
        assert segs["total"] == 1 and segs["items"][0]["n_ready"] == 2 and segs["items"][0]["name"] == ""
        its = c.get(f"/tasks/{ids[0]}/iterations").json()
        assert its["total"] >= 1 and sum(i["produced"] for i in its["items"]) == 2
        assert c.get(f"/tasks/{ids[0]}/best").json()[0]["point_id"] is None
        assert c.get(f"/tasks/{ids[0]}/artifacts").json()["total"] == 0
        assert c.get("/tasks/999999").status_code == 404


def test_segmented_task(db_url, start_server):
    srv = start_server(db_url)
    with srv.client() as c:
        t = create_task(
            c,
            maxPoints=3,
            nParallelEvaluation=2,
            evaluationExec="python train.py --seg %SEGMENT_NAME",
            segments=[{"name": "photons", "files": ["p.tar"]}, {"name": "electrons", "files": ["e.tar"]}],
        )
        assert t["n_segments"] == 2
        wait_until(lambda: len(points(c, t["id"])) == 4, what="2 points per segment")
        segs = c.get(f"/tasks/{t['id']}/segments").json()["items"]
        assert [(s["id"], s["name"], s["files"]) for s in segs] == [
            (0, "photons", ["p.tar"]),
            (1, "electrons", ["e.tar"]),
        ]
        assert c.get(f"/tasks/{t['id']}/points", params={"segment": 1}).json()["total"] == 2
    with srv.client(srv.agent_token) as a:
        jobs = [a.post("/jobs/acquire", json={"agent": "a", "site": "s"}).json() for _ in range(2)]
        by_seg = {j["segment"]: j for j in jobs}
        # round robin: the second job comes from the other segment
        assert set(by_seg) == {"photons", "electrons"}
        assert by_seg["photons"]["evaluation"]["exec"] == "python train.py --seg photons"
        assert by_seg["electrons"]["evaluation"]["training_files"] == ["e.tar"]
        j = by_seg["electrons"]
        pid = j["points"][0]["point_id"]
        r = a.post(f"/jobs/{j['id']}/points/{pid}/result", json={"point_id": pid, "loss": 0.0})
        assert r.status_code == 200
    with srv.client() as c:
        best = c.get(f"/tasks/{t['id']}/best").json()
        assert best[1]["point_id"] == pid and best[1]["loss"] == 0.0  # 0.0 is a real loss
        assert best[0]["point_id"] is None
        assert c.get(f"/tasks/{t['id']}/best", params={"segment": 1}).json()[0]["segment"] == "electrons"
        assert c.get(f"/tasks/{t['id']}/best", params={"segment": 7}).status_code == 422


def test_isolation(db_url, start_server):
    srv = start_server(db_url)
    bob = srv.token("bob", "user")
    with srv.client() as alice:
        tid = create_task(alice)["id"]
    with srv.client(bob) as b:
        for path in (f"/tasks/{tid}", f"/tasks/{tid}/points", f"/tasks/{tid}/segments", f"/tasks/{tid}/best"):
            r = b.get(path)
            assert r.status_code == 404, path
            assert r.json()["code"] == "not_found"
        r = b.post(f"/tasks/{tid}/cancel")
        assert r.status_code == 404
        assert b.get("/tasks").json()["total"] == 0
    with srv.client() as alice:
        assert task(alice, tid)["state"] == "running"  # bob's cancel changed nothing
    with srv.client(srv.agent_token) as ag:
        r = ag.post("/tasks", json=spec())
        assert r.status_code == 403 and r.json()["code"] == "forbidden"
        assert ag.get(f"/tasks/{tid}").status_code == 403
    with srv.client() as alice:
        r = alice.post("/jobs/acquire", json={"agent": "x", "site": "y"})
        assert r.status_code == 403
        assert alice.get("/tasks").json()["total"] == 1
    with srv.client(srv.admin_token) as adm:
        assert adm.get(f"/tasks/{tid}").status_code == 200
        assert adm.get("/tasks").json()["total"] == 1


def test_illegal_transitions(db_url, start_server):
    srv = start_server(db_url)
    with srv.client() as c:
        tid = create_task(c)["id"]
        r = c.post(f"/tasks/{tid}/resume")  # running -> running
        assert r.status_code == 409 and r.json()["code"] == "illegal_transition"
        assert "running" in r.json()["message"]
        assert c.post(f"/tasks/{tid}/pause").json()["state"] == "paused"
        assert c.post(f"/tasks/{tid}/pause").status_code == 409
        assert c.post(f"/tasks/{tid}/resume").json()["state"] == "running"
        assert c.post(f"/tasks/{tid}/cancel").json()["state"] == "cancelled"
        for action in ("cancel", "pause", "resume"):
            r = c.post(f"/tasks/{tid}/{action}")
            assert r.status_code == 409, action
            assert r.json()["code"] == "illegal_transition" and "final" in r.json()["message"]
        assert task(c, tid)["state"] == "cancelled"
        wait_until(lambda: all(p["state"] == "cancelled" for p in points(c, tid)), what="points cancelled")


def test_round_robin_serves_every_segment_before_any_twice(db_url, start_server):
    """Fair scheduling with more segments than one page of acquire candidates (64): every
    segment has 2 ready points, yet 70 acquires lease from 70 different segments (the segment
    served longest ago, or never, goes first), so no segment starves."""
    srv = start_server(db_url)
    n = 70
    with srv.client() as c:
        t = create_task(
            c, maxPoints=2, nParallelEvaluation=2, segments=[{"name": f"s{i:02d}"} for i in range(n)]
        )
        wait_until(
            lambda: c.get(f"/tasks/{t['id']}").json()["counts"]["ready"] == 2 * n,
            timeout=60,
            what="2 ready points in every segment",
        )
    with srv.client(srv.agent_token) as a:
        served = [
            a.post("/jobs/acquire", json={"agent": "a", "site": "s"}).json()["segment"] for _ in range(n)
        ]
    assert sorted(served) == [f"s{i:02d}" for i in range(n)]
