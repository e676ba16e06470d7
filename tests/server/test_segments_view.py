"""The per-segment summary of a segmented task (issue 6, "Views"): sorted by any of its columns
and paged by the API, on SQLite and PostgreSQL, with a real server process.

Five segments get known outcomes through the real job protocol (acquire, result, complete):
different best losses, evaluated/failed/running counts, and one segment with no best loss."""

from __future__ import annotations

from typing import Any

import httpx

from .helpers import acquire, create_task, task, wait_until

SEGMENTS = ["alpha", "beta", "gamma", "delta", "eps"]  # ids 0..4
# what happens to each segment's 3 points, in the order its jobs are handed out:
# a loss, "fail" (status 1; maxAttempts 1 -> failed) or "hold" (leased, never reported)
PLAN: dict[str, list[Any]] = {
    "alpha": [0.5, 0.4, 0.6],  # 3 evaluated, best 0.4
    "beta": [0.1, "fail", "fail"],  # 1 evaluated, 2 failed, best 0.1
    "gamma": ["hold", "hold", 0.9],  # 1 evaluated, 2 running, best 0.9
    "delta": ["fail", "fail", "fail"],  # 3 failed, no best loss
    "eps": [0.25, 0.3, "hold"],  # 2 evaluated, 1 running, best 0.25
}


def make_segmented_task(srv) -> int:
    """A 5-segment task whose segments end up as PLAN says; returns its id."""
    with srv.client() as c:
        tid = create_task(
            c,
            maxPoints=3,
            nParallelEvaluation=3,
            maxAttempts=1,
            outDS="segments.view",
            evaluationExec="python train.py %SEGMENT_NAME",
            segments=[{"name": n, "files": [f"{n}.tar"]} for n in SEGMENTS],
        )["id"]
        wait_until(lambda: task(c, tid)["counts"]["ready"] == 15, what="3 ready points in each of 5 segments")
    todo = {n: list(actions) for n, actions in PLAN.items()}
    with srv.client(srv.agent_token) as a:
        for _ in range(15):
            job = acquire(a, kinds=["evaluation"])
            assert job is not None, "a ready point was not handed out"
            action = todo[job["segment"]].pop(0)
            if action == "hold":
                continue
            pid = job["points"][0]["point_id"]
            body = (
                {"point_id": pid, "status": 1, "message": "boom"}
                if action == "fail"
                else {"point_id": pid, "loss": action}
            )
            r = a.post(f"/jobs/{job['id']}/points/{pid}/result", json=body)
            assert r.status_code == 200, r.text
            assert a.post(f"/jobs/{job['id']}/complete", json={}).status_code == 200
    assert all(not left for left in todo.values()), todo
    return tid


def page(c: httpx.Client, tid: int, **params: Any) -> dict[str, Any]:
    r = c.get(f"/tasks/{tid}/segments", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def ids(c: httpx.Client, tid: int, sort: str | None = None) -> list[int]:
    return [g["id"] for g in page(c, tid, **({"sort": sort} if sort else {}))["items"]]


def test_segments_sort_and_pages(db_url, start_server):
    srv = start_server(db_url, "--lease-seconds", "600")  # the held points stay running
    tid = make_segmented_task(srv)
    with srv.client() as c:
        segs = {g["name"]: g for g in page(c, tid)["items"]}
        got = {n: (g["n_evaluated"], g["n_failed"], g["n_leased"], g["best_loss"]) for n, g in segs.items()}
        assert got == {
            "alpha": (3, 0, 0, 0.4),
            "beta": (1, 2, 0, 0.1),
            "gamma": (1, 0, 2, 0.9),
            "delta": (0, 3, 0, None),
            "eps": (2, 0, 1, 0.25),
        }
        assert segs["eps"]["best_params"] is not None and segs["delta"]["best_params"] is None

        assert ids(c, tid) == [0, 1, 2, 3, 4]  # default: by id
        assert ids(c, tid, "-id") == [4, 3, 2, 1, 0]
        assert ids(c, tid, "name") == [0, 1, 3, 4, 2]  # alpha beta delta eps gamma
        # no best loss (delta) comes last in both directions
        assert ids(c, tid, "best_loss") == [1, 4, 0, 2, 3]
        assert ids(c, tid, "-best_loss") == [2, 0, 4, 1, 3]
        # ties in id order, whichever the direction
        assert ids(c, tid, "-evaluated") == [0, 4, 1, 2, 3]
        assert ids(c, tid, "evaluated") == [3, 1, 2, 4, 0]
        assert ids(c, tid, "failed") == [0, 2, 4, 1, 3]
        assert ids(c, tid, "-running") == [2, 4, 0, 1, 3]
        assert ids(c, tid, "-leased") == ids(c, tid, "-running")
        assert ids(c, tid, "jobs") == [0, 1, 2, 3, 4]  # 3 jobs each

        # a page of the sorted order, with the total of all segments
        p = page(c, tid, sort="best_loss", limit=2, offset=2)
        assert [g["name"] for g in p["items"]] == ["alpha", "gamma"]
        assert (p["total"], p["limit"], p["offset"]) == (5, 2, 2)
        assert [g["id"] for g in page(c, tid, sort="best_loss", limit=2, offset=4)["items"]] == [3]
        assert page(c, tid, sort="-evaluated", offset=5)["items"] == []
        # the pages put together are the whole order
        pages = [
            g["id"] for o in (0, 2, 4) for g in page(c, tid, sort="-best_loss", limit=2, offset=o)["items"]
        ]
        assert pages == [2, 0, 4, 1, 3]

        r = c.get(f"/tasks/{tid}/segments", params={"sort": "bogus"})
        assert r.status_code == 422, r.text
        err = r.json()
        assert err["field"] == "sort" and "bogus" in err["message"]
        for key in ("id", "name", "best_loss", "evaluated", "failed", "running", "ready", "jobs", "finished"):
            assert key in err["message"], key
        assert c.get(f"/tasks/{tid}/segments", params={"sort": "-bogus"}).json()["field"] == "sort"
        r = c.get(f"/tasks/{tid}/segments", params={"limit": 0})
        assert r.status_code == 422 and r.json()["field"] == "limit"
