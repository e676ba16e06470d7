"""A task's ``specs`` artifacts (phpo.data specs shared by its jobs): uploaded by the agent holding
one of its jobs, listed and served to agents holding its jobs, one per content key (the first
upload wins), size-limited and named by their key. A real server process on SQLite and on
PostgreSQL."""

from __future__ import annotations

from phpo.schemas.data_specs import SPECS_MAX_BYTES

from .helpers import acquire, create_task, wait_until

NAME = "specs-" + "a" * 32 + ".json"
OTHER = "specs-" + "b" * 32 + ".json"


def _token(c, name: str) -> str:
    r = c.post("/tokens", json={"name": name, "role": "agent"})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def _put(c, job_id: int, name: str | None, body: bytes = b'{"fkeys": []}', **params):
    return c.put(
        f"/jobs/{job_id}/artifacts/specs", content=body, params={**({"name": name} if name else {}), **params}
    )


def test_specs_belong_to_the_task_first_upload_wins_and_only_holders_read_them(db_url, start_server):
    srv = start_server(db_url)
    with srv.client(srv.admin_token) as admin:
        tok_a, tok_r = _token(admin, "agent-a"), _token(admin, "rogue")
    with srv.client() as alice, srv.client(tok_a) as a, srv.client(tok_r) as r:
        tid = create_task(alice, maxPoints=2, nParallelEvaluation=2)["id"]
        j1 = wait_until(lambda: acquire(a, agent="agent-a"), what="a first job")
        j2 = wait_until(lambda: acquire(a, agent="agent-a"), what="a second job of the task")
        assert j1["task_id"] == j2["task_id"] == tid and j1["id"] != j2["id"]
        assert a.get(f"/jobs/{j1['id']}/specs").json() == []
        # refused: a name that is not a content key, a point, too large; nothing is stored
        for name, params, body, status, field in (
            (None, {}, b"{}", 422, "name"),
            ("specs.json", {}, b"{}", 422, "name"),
            (NAME, {"point_id": j1["points"][0]["point_id"]}, b"{}", 422, "point_id"),
            (NAME, {}, b"x" * (SPECS_MAX_BYTES + 1), 413, "body"),
        ):
            resp = _put(a, j1["id"], name, body, **params)
            assert resp.status_code == status and resp.json()["field"] == field, resp.text
        assert a.get(f"/jobs/{j1['id']}/specs").json() == []
        # the first upload of a key wins; the task's other job sending the same key gets 409
        first = _put(a, j1["id"], NAME, b'{"first": 1}')
        assert first.status_code == 201 and first.json()["kind"] == "specs", first.text
        second = _put(a, j2["id"], NAME, b'{"second": 2}')
        assert second.status_code == 409 and str(first.json()["id"]) in second.json()["message"], second.text
        assert _put(a, j2["id"], OTHER).status_code == 201
        # both jobs list the task's specs, and the holder downloads them
        for j in (j1, j2):
            listed = a.get(f"/jobs/{j['id']}/specs").json()
            assert [x["name"] for x in listed] == [NAME, OTHER]
            assert all(x["task_id"] == tid for x in listed)
        assert a.get(f"/artifacts/{first.json()['id']}").content == b'{"first": 1}'
        # another agent token: neither the list, nor the file, nor an upload
        assert r.get(f"/jobs/{j1['id']}/specs").status_code == 404
        assert r.get(f"/artifacts/{first.json()['id']}").status_code == 404
        assert _put(r, j1["id"], "specs-" + "c" * 32 + ".json").status_code == 404
        assert a.get("/jobs/999999/specs").status_code == 404
        # the task's owner sees them among its artifacts
        mine = alice.get(f"/tasks/{tid}/artifacts", params={"kind": "specs"}).json()["items"]
        assert sorted(x["name"] for x in mine) == [NAME, OTHER]
        # a job that has ended takes no more specs
        pid = j1["points"][0]["point_id"]
        assert (
            a.post(
                f"/jobs/{j1['id']}/complete", json={"results": [{"point_id": pid, "status": 0, "loss": 0.1}]}
            ).status_code
            == 200
        )
        late = _put(a, j1["id"], "specs-" + "d" * 32 + ".json")
        assert late.status_code == 409 and late.json()["field"] == "job_id", late.text
