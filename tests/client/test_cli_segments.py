"""``phpo segments``, ``Client.segments(sort=...)`` and the segment parts of ``phpo show`` and
``phpo best --segments --csv``, against a real server process (issue 6, "Views").

The segments get known losses through the real job protocol (acquire, result, complete), so
their order by best loss is known; one segment's points stay running and it has no best loss."""

from __future__ import annotations

import csv
import io
import json
import time
from typing import Any

import httpx
import pytest
from conftest import run_phpo

from phpo.client import Client, InvalidInput

pytestmark = pytest.mark.slow

# segment -> what happens to its 2 points, in the order its jobs are handed out ("hold": leased)
PLAN: dict[str, list[Any]] = {
    "s0": [0.7, 0.2],
    "s1": [0.05, 0.9],
    "s2": ["hold", "hold"],  # no best loss
    "s3": [0.3, 0.4],
    "s4": [0.6, 0.5],
}
BY_BEST = ["s1", "s0", "s3", "s4", "s2"]  # ascending best loss, none last
SPACE = {"x": {"method": "uniform", "dimension": {"low": 0.0, "high": 1.0}}}


def submit(c: httpx.Client, names: list[str], max_points: int) -> int:
    r = c.post(
        "/tasks",
        json={
            "evaluationExec": "python train.py %SEGMENT_NAME",
            "searchSpace": SPACE,
            "optimizer": "random",
            "maxPoints": max_points,
            "nParallelEvaluation": max_points,
            "outDS": "cli.segments",
            "segments": [{"name": n, "files": []} for n in names],
        },
    )
    assert r.status_code == 201, r.text
    return r.json()["id"]


def wait_ready(c: httpx.Client, tid: int, n: int) -> None:
    deadline = time.time() + 30
    while time.time() < deadline:
        if c.get(f"/tasks/{tid}").json()["counts"]["ready"] == n:
            return
        time.sleep(0.05)
    raise AssertionError(f"task {tid} never had {n} ready points")


@pytest.fixture
def seg_server(start_server):
    return start_server(None, "--lease-seconds", "600")


@pytest.fixture
def seg_task(seg_server) -> int:
    srv = seg_server
    with srv.client() as c:
        tid = submit(c, list(PLAN), 2)
        wait_ready(c, tid, 10)
    todo = {n: list(a) for n, a in PLAN.items()}
    with srv.client(srv.agent_token) as a:
        for _ in range(10):
            r = a.post("/jobs/acquire", json={"agent": "a", "site": "local", "kinds": ["evaluation"]})
            assert r.status_code == 200, r.text
            job = r.json()
            action = todo[job["segment"]].pop(0)
            if action == "hold":
                continue
            pid = job["points"][0]["point_id"]
            rr = a.post(f"/jobs/{job['id']}/points/{pid}/result", json={"point_id": pid, "loss": action})
            assert rr.status_code == 200, rr.text
            assert a.post(f"/jobs/{job['id']}/complete", json={}).status_code == 200
    assert all(not left for left in todo.values()), todo
    return tid


def env_of(srv) -> dict[str, str]:
    return {"PHPO_URL": srv.url, "PHPO_TOKEN": srv.user_token}


def test_client_segments_sort_and_slice(seg_server, seg_task):
    with Client(seg_server.url, seg_server.user_token) as c:
        assert [g.name for g in c.segments(seg_task)] == list(PLAN)
        assert [g.name for g in c.segments(seg_task, sort="best_loss")] == BY_BEST
        assert [g.name for g in c.segments(seg_task, sort="-best_loss")] == ["s4", "s3", "s0", "s1", "s2"]
        assert [g.name for g in c.segments(seg_task, sort="-running")] == ["s2", "s0", "s1", "s3", "s4"]
        assert [g.name for g in c.segments(seg_task, sort="best_loss", limit=2, offset=2)] == ["s3", "s4"]
        assert [g.name for g in c.segments(seg_task, sort="best_loss", offset=3)] == ["s4", "s2"]
        with pytest.raises(InvalidInput) as e:
            c.segments(seg_task, sort="colour")
        assert e.value.field == "sort" and "best_loss" in e.value.message


def test_cli_segments_csv_json_table(seg_server, seg_task):
    env = env_of(seg_server)
    with Client(seg_server.url, seg_server.user_token) as c:
        best = {b.segment: b for b in c.best(seg_task)}

    out = run_phpo("segments", str(seg_task), "--sort", "best_loss", "--csv", env=env).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["name"] for r in rows] == BY_BEST
    assert [r["id"] for r in rows] == ["1", "0", "3", "4", "2"]
    assert [r["best_loss"] for r in rows] == ["0.05", "0.2", "0.3", "0.5", ""]
    assert [r["evaluated"] for r in rows] == ["2", "2", "2", "2", "0"]
    assert rows[-1]["running"] == "2" and rows[0]["running"] == "0"
    for r in rows[:-1]:  # the best point's parameters, one column each
        assert float(r["x"]) == pytest.approx(best[r["name"]].params["x"])
    assert rows[-1]["x"] == ""

    # descending with the `-KEY` syntax, one slice, as JSON
    got = json.loads(
        run_phpo(
            "segments", str(seg_task), "--sort=-best_loss", "--limit", "2", "--offset", "1", "--json", env=env
        ).stdout
    )
    assert [g["name"] for g in got] == ["s3", "s0"]
    assert got[0]["best_loss"] == 0.3 and got[0]["best_params"] == best["s3"].params
    # `--sort -KEY` (a separate word that starts with '-') works too
    got = json.loads(run_phpo("segments", str(seg_task), "--sort", "-evaluated", "--json", env=env).stdout)
    assert [g["name"] for g in got] == ["s0", "s1", "s3", "s4", "s2"]

    # the table, in the asked order, and a note on stderr when it is a slice
    p = run_phpo("segments", str(seg_task), "--sort", "best_loss", "--limit", "3", env=env)
    lines = [ln for ln in p.stdout.splitlines() if any(f" {n} " in ln for n in PLAN)]
    assert [next(n for n in PLAN if f" {n} " in ln) for ln in lines] == BY_BEST[:3]
    assert "best loss" in p.stdout and "x" in p.stdout
    assert "1-3 of 5" in p.stderr and "--offset 3" in p.stderr

    bad = run_phpo("segments", str(seg_task), "--sort", "bogus", env=env, check=False)
    assert bad.returncode == 2, bad.stderr
    assert "--sort" in bad.stderr and "bogus" in bad.stderr and "best_loss" in bad.stderr
    both = run_phpo("segments", str(seg_task), "--json", "--csv", env=env, check=False)
    assert both.returncode == 2 and "--json and --csv" in both.stderr


def test_best_segments_csv_has_one_row_per_segment(seg_server, seg_task):
    out = run_phpo("best", str(seg_task), "--segments", "--csv", env=env_of(seg_server)).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["segment", "point", "loss", "x"]
    assert [r["segment"] for r in rows] == list(PLAN)
    assert [r["loss"] for r in rows] == ["0.2", "0.05", "", "0.3", "0.5"]
    assert rows[2]["point"] == "" and all(r["point"] for i, r in enumerate(rows) if i != 2)


def test_show_has_the_segment_table(seg_server, seg_task):
    out = run_phpo("show", str(seg_task), "--points", "0", env=env_of(seg_server)).stdout
    assert [n for n in PLAN if f" {n} " in out] == list(PLAN) and "more segments" not in out
    assert "0.05" in out and "best loss" in out
    assert "at point" not in out  # the table has each segment's best point; no extra line per segment


def test_show_lists_at_most_20_segments(seg_server):
    names = [f"seg{i:02d}" for i in range(23)]
    with seg_server.client() as c:
        tid = submit(c, names, 1)
    out = run_phpo("show", str(tid), "--points", "0", env=env_of(seg_server)).stdout
    shown = [n for n in names if f" {n} " in out]
    assert shown == names[:20]
    assert f"3 more segments: phpo segments {tid}" in out
