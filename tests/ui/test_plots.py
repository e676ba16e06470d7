"""Plots drawn from real finished tasks (real server, real agent, the payload of ui_helpers), checked
for what they show: how many points are plotted, with which values, on which axes."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
import shutil
import subprocess
import sys

import pytest
from conftest import run_phpo

from server.helpers import TinyAgent, create_task, wait_until

from .ui_helpers import new_user

pytestmark = pytest.mark.slow


def _points(stack, tid: int) -> list[dict]:
    with stack.http() as h:
        r = h.get(f"/tasks/{tid}/points", params={"limit": 1000, "sort": "evaluated_at"})
        assert r.status_code == 200, r.text
        return r.json()["items"]


def test_history_plots_every_evaluated_point_in_order_with_the_best_so_far(stack):
    tid = stack.tasks["single"]
    pts = [p for p in _points(stack, tid) if p["state"] == "evaluated"]
    assert len(pts) == 10
    with stack.client() as c:
        fig = c.plot(tid, "history")
    losses = {d.name: list(d.y) for d in fig.data if d.y is not None and len(d.y)}
    assert losses["loss"] == pytest.approx([p["loss"] for p in pts])  # evaluation order
    best = losses["Best Value"]
    assert best == pytest.approx([min(x["loss"] for x in pts[: i + 1]) for i in range(len(pts))])
    assert fig.layout.yaxis.title.text == "loss"
    assert fig.layout.xaxis.title.text == "point (in evaluation order)"
    assert f"task {tid}" in fig.layout.title.text


def test_parallel_coordinates_have_an_axis_per_parameter_and_a_line_per_point(stack):
    tid = stack.tasks["single"]
    with stack.http() as h:
        fig = h.get(f"/tasks/{tid}/plots/parallel").json()
    assert sorted(fig["layout"]["xaxis"]["ticktext"]) == ["act", "loss", "x", "y"]
    lines = [d for d in fig["data"] if d.get("mode") == "lines"]
    assert len(lines) == 10  # one line through the axes per evaluated point
    shown = sorted(float(dict(d["customdata"])["loss"]) for d in lines)
    losses = sorted(p["loss"] for p in _points(stack, tid) if p["state"] == "evaluated")
    assert shown == pytest.approx(losses, rel=0.01)  # the hover text has 3 significant digits
    assert f"task {tid}" in fig["layout"]["title"]["text"]


def test_importance_ranks_every_parameter_with_fanova(stack):
    tid = stack.tasks["single"]
    with stack.client() as c:
        fig = c.plot(tid, "importance")
    (bar,) = [d for d in fig.data if d.type == "bar"]
    assert sorted(bar.y) == ["act", "x", "y"]
    assert all(0 <= v <= 1 for v in bar.x) and sum(bar.x) == pytest.approx(1, abs=0.02)
    assert fig.layout.xaxis.title.text == "Hyperparameter Importance"


def test_learning_curves_are_the_intermediate_values_the_payload_reported(stack):
    tid = stack.tasks["single"]
    pts = [p for p in _points(stack, tid) if p["state"] == "evaluated"]
    with stack.client() as c:
        fig = c.plot(tid, "intermediate")
    curves = [d for d in fig.data if d.mode and "lines" in d.mode]
    assert len(curves) == len(pts) == 10
    want = sorted(tuple(round(v["value"], 9) for v in p["intermediate"]) for p in pts)
    got = sorted(tuple(round(v, 9) for v in d.y) for d in curves)
    assert got == want
    assert all(list(d.x) == [0, 1, 2, 3] for d in curves)
    assert fig.layout.xaxis.title.text == "step" and fig.layout.yaxis.title.text == "intermediate value"


def test_pareto_front_of_a_two_objective_task_is_the_servers_front(stack):
    tid = stack.tasks["multi"]
    with stack.http() as h:
        (best,) = h.get(f"/tasks/{tid}/best").json()
        fig = h.get(f"/tasks/{tid}/plots/pareto").json()
        single = h.get(f"/tasks/{stack.tasks['single']}/plots/pareto")
    front = [d for d in fig["data"] if d.get("name") == "Pareto front"]
    assert len(front) == 1
    got = sorted(zip(front[0]["x"], front[0]["y"], strict=True))
    want = sorted(tuple(p["loss"]) for p in best["pareto"])
    assert len(got) == len(want) >= 1
    assert [v for xy in got for v in xy] == pytest.approx([v for xy in want for v in xy])
    others = [d for d in fig["data"] if d.get("name") == "dominated points"]
    assert len(got) + sum(len(d["x"]) for d in others) == 8  # every evaluated point is drawn
    assert fig["layout"]["xaxis"]["title"]["text"] == "loss[0] (minimize)"
    assert fig["layout"]["yaxis"]["title"]["text"] == "loss[1] (minimize)"
    assert single.status_code == 400 and single.json()["field"] == "kind"
    assert "multi-objective" in single.json()["message"]


def test_segments_plot_has_one_bar_per_segment_with_its_best_loss(stack):
    tid = stack.tasks["segmented"]
    with stack.http() as h:
        segs = h.get(f"/tasks/{tid}/segments").json()["items"]
        fig = h.get(f"/tasks/{tid}/plots/segments").json()
        hist1 = h.get(f"/tasks/{tid}/plots/history", params={"segment": 1}).json()
        bad = h.get(f"/tasks/{tid}/plots/history", params={"segment": 5})
    (bar,) = fig["data"]
    assert bar["x"] == ["barrel", "endcap"]
    assert bar["y"] == pytest.approx([g["best_loss"] for g in segs])
    assert fig["layout"]["yaxis"]["title"]["text"] == "best loss"
    assert "segment endcap" in hist1["layout"]["title"]["text"]
    assert len(hist1["data"][0]["x"]) == segs[1]["n_evaluated"] == 4
    assert bad.status_code == 422 and bad.json()["field"] == "segment"


def test_bad_kind_too_few_points_and_other_users_are_refused_with_the_reason(stack, tmp_path):
    tid = stack.tasks["single"]
    with stack.http() as h:
        r = h.get(f"/tasks/{tid}/plots/scatter3d")
        assert r.status_code == 404 and r.json()["field"] == "kind"
        assert "history, parallel, importance" in r.json()["message"]
        one = h.post(
            "/tasks",
            json={
                "evaluationExec": "true",
                "searchSpace": {"x": {"type": "float", "low": 0, "high": 1}},
                "maxPoints": 1,
                "site": "nowhere",
            },
        ).json()["id"]
        r = h.get(f"/tasks/{one}/plots/importance")
        assert r.status_code == 409 and r.json()["code"] == "not_enough_points"
        assert "at least 2 evaluated points" in r.json()["message"]
    bob = new_user(stack.server, "bob-plots")
    with stack.http(bob) as h:
        r = h.get(f"/tasks/{tid}/plots/history")
        assert r.status_code == 404, r.text
    import httpx

    assert httpx.get(f"{stack.url}/api/v1/tasks/{tid}/plots/history").status_code == 401


def test_phpo_plot_writes_an_offline_html_and_a_png(stack, tmp_path):
    tid = stack.tasks["single"]
    env = {"PHPO_URL": stack.url, "PHPO_TOKEN": stack.token}
    html = tmp_path / "h.html"
    p = run_phpo("plot", str(tid), "history", "--out", str(html), env=env)
    text = html.read_text()
    assert p.stdout.strip() == str(html)
    assert "Optimization History Plot" in text and len(text) > 1_000_000  # plotly.js is inside
    assert not re.search(r"<script[^>]+src=", text)  # nothing is fetched: it opens offline
    p = run_phpo("plot", str(tid), "history", "--out", str(tmp_path / "h.txt"), env=env, check=False)
    assert p.returncode == 2 and ".html" in p.stderr
    kaleido = subprocess.run([sys.executable, "-c", "import kaleido"], capture_output=True).returncode == 0
    if not kaleido or not (shutil.which("chromium") or shutil.which("google-chrome")):
        print("\nSKIPPED the PNG half: kaleido or chromium is missing (`make chromium`)", file=sys.stderr)
        return
    png = tmp_path / "h.png"
    run_phpo("plot", str(tid), "importance", "--out", str(png), env=env, timeout=180)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_history_route_reads_points_from_either_database(db_url, start_server):
    """The plots read the stored points through the same queries on SQLite and PostgreSQL; a
    TinyAgent (real HTTP, in this process) evaluates them: loss = x. The first plot requests of
    the fresh server come at once, as the web view sends them (plotly importing modules lazily
    in several threads at once deadlocked in importlib, a 500; test_web's task page test is where
    it showed every time)."""
    server = start_server(db_url, "--manager-interval", "0.2")
    agent = TinyAgent(server.url, server.agent_token, loss_fn=lambda p: p["x"])
    agent.start()
    try:
        with server.client() as h:
            tid = create_task(h, maxPoints=4, nParallelEvaluation=2)["id"]
            wait_until(lambda: h.get(f"/tasks/{tid}").json()["state"] == "finished", 60, what="task finished")
            pts = h.get(f"/tasks/{tid}/points", params={"sort": "evaluated_at"}).json()["items"]
        kinds = ["history", "parallel", "importance", "intermediate", "history", "parallel"] * 2
        with ThreadPoolExecutor(len(kinds)) as pool:
            answers = list(pool.map(lambda k: server.client().get(f"/tasks/{tid}/plots/{k}"), kinds))
    finally:
        agent.halt()
    assert [r.status_code for r in answers] == [200, 200, 200, 409, 200, 200] * 2, [
        r.text[:200] for r in answers
    ]
    assert "reported intermediate values" in answers[3].json()["message"]  # TinyAgent reports none
    fig = answers[0].json()
    assert fig["data"][0]["y"] == pytest.approx([p["loss"] for p in pts]) and len(pts) == 4


def test_phpo_plot_png_without_kaleido_says_how_to_get_it_or_use_html(stack, tmp_path, monkeypatch, capsys):
    from phpo.client.cli.main import main

    monkeypatch.setitem(sys.modules, "kaleido", None)  # as if kaleido were not installed
    monkeypatch.setenv("PHPO_URL", stack.url)
    monkeypatch.setenv("PHPO_TOKEN", stack.token)
    out = tmp_path / "h.png"
    assert main(["plot", str(stack.tasks["single"]), "history", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "needs kaleido: pip install 'phpo[plots]'" in err and "--out FILE.html" in err
    assert not out.exists()
