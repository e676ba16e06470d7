"""The web view (/ui/) driven in headless Chromium with Playwright, against a real server with a
real agent and a real MLflow tracking server (the links into MLflow are the bridge's runs).

Chromium is Debian's (``make chromium``); Playwright only drives it. Screenshots go to
``$PHPO_UI_SHOTS`` (default /tmp/phpo-ui-shots) so a person can look at them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import free_port, run_phpo
from workflows.conftest import stop_agent
from workflows.wf_helpers import User, by_path, hpo, job, write_payloads

from .conftest import make_stack
from .ui_helpers import SPACE, new_user, start_mlflow, submit

pytestmark = pytest.mark.slow

SHOTS = Path(os.environ.get("PHPO_UI_SHOTS", "/tmp/phpo-ui-shots"))


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    binary = _chromium()
    if binary is None:
        msg = "SKIPPING WEB VIEW TESTS: no chromium binary (`make chromium` installs it on Debian as root)"
        print("\n" + msg, file=sys.stderr)
        pytest.skip(msg)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=binary,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        yield b
        b.close()


@pytest.fixture(scope="module")
def web(tmp_path_factory, browser):
    root = tmp_path_factory.mktemp("ui-mlflow")
    port = free_port()
    mlflow = start_mlflow(root, port)
    try:
        stack, agent = make_stack(tmp_path_factory, "--mlflow-uri", f"http://127.0.0.1:{port}")
        write_payloads(stack.payloads)  # the workflow test's job.py and quad.py beside train.py
        try:
            stack.run_task("single", max_points=8)
            yield stack
        finally:
            stop_agent(agent)
            stack.server.stop()
    finally:
        stop_agent(mlflow)  # also when the server or the agent did not start


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    errors: list[str] = []
    console: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    yield pg
    print("\n--- browser console ---\n" + "\n".join(console[-30:]), file=sys.stderr)
    with contextlib.suppress(Exception):
        shot(pg, "last")
    ctx.close()
    assert not errors, f"the page raised: {errors}"


def shot(pg, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    pg.screenshot(path=str(path), full_page=True)
    print(f"\nscreenshot: {path}", file=sys.stderr)
    return path


def login(pg, web, token: str | None = None) -> None:
    pg.goto(f"{web.url}/ui/?token={token or web.token}")
    pg.wait_for_selector("#who:has-text('(user)')")


def test_phpo_ui_link_logs_in_and_the_token_leaves_the_address(web, page):
    p = run_phpo("ui", env={"PHPO_URL": web.url, "PHPO_TOKEN": web.token})
    link = p.stdout.strip()
    assert link == f"{web.url}/ui/?token={web.token}"
    page.goto(link)
    page.wait_for_selector(f"#tasks tr[data-id='{web.tasks['single']}']")
    assert "token" not in page.url and page.url.startswith(f"{web.url}/ui/")
    assert page.evaluate("location.search") == "" and web.token not in page.evaluate("location.href")
    assert page.inner_text("#who") == "alice (user)"
    # the token stays for the tab (sessionStorage): a reload of the bare address is still logged in
    page.reload()
    page.wait_for_selector(f"#tasks tr[data-id='{web.tasks['single']}']")
    shot(page, "01-tasks")


def test_login_page_takes_a_token_and_refuses_a_wrong_one(web, page):
    page.goto(f"{web.url}/ui/")
    page.wait_for_selector("#login-form")
    page.fill("#token", "phpo_not-a-token")
    page.click("#login-form button")
    page.wait_for_selector("#login-error:has-text('not valid')")
    shot(page, "02-login-refused")
    page.fill("#token", web.token)
    page.click("#login-form button")
    page.wait_for_selector(f"#tasks tr[data-id='{web.tasks['single']}']")


def test_tasks_list_shows_a_running_task_progress_live_without_reloading(web, page, tmp_path):
    hold = tmp_path / "hold"
    hold.write_text("the payload waits while this file exists")
    space = {**SPACE, "hold": {"type": "fixed", "value": str(hold)}}
    tid = submit(web.url, web.token, web.payloads, max_points=6, searchSpace=space)
    login(page, web)
    page.evaluate("window.__not_reloaded = true")
    row = f"#tasks tr[data-id='{tid}']"
    page.wait_for_selector(f"{row} .state-running")
    page.wait_for_selector(f"{row} td:nth-child(5):has-text('3')")  # three points held by the agent
    assert page.get_attribute(f"{row} .progress", "data-evaluated") == "0"
    assert page.get_attribute(f"{row} .progress", "data-total") == "6"
    shot(page, "03a-tasks-running")
    hold.unlink()  # the points go on: the page follows by itself
    page.wait_for_selector(f"{row} .state-finished", timeout=120_000)
    assert page.get_attribute(f"{row} .progress", "data-evaluated") == "6"
    assert page.evaluate("window.__not_reloaded") is True
    shot(page, "03b-tasks-finished")


def test_task_page_shows_counts_best_point_plots_and_sortable_points(web, page):
    tid = web.tasks["single"]
    with web.http() as h:
        (best,) = h.get(f"/tasks/{tid}/best").json()
        pts = h.get(f"/tasks/{tid}/points", params={"sort": "loss"}).json()["items"]
    login(page, web)
    page.click(f"#tasks tr[data-id='{tid}']")
    page.wait_for_selector("#task-head h1 .state-finished")
    assert page.inner_text("[data-count='evaluated'] .v") == "8"
    assert f"point {best['point_id']}" in page.inner_text("#best")
    for kind in ("history", "parallel", "importance", "intermediate"):
        page.wait_for_selector(f"#plot-{kind} .main-svg", timeout=30000)
    assert page.get_attribute("#plot-history", "data-points") is not None
    assert "point (in evaluation order)" in page.inner_text("#plot-history")
    # the points table: best first, then sorted by id on a click, descending on a second
    page.wait_for_selector("#points tbody tr")
    ids = page.eval_on_selector_all("#points tbody tr", "rs => rs.map(r => Number(r.dataset.id))")
    assert ids == [p["id"] for p in pts]
    page.click("#points th[data-col='id']")
    page.wait_for_selector("#points th[data-col='id'][aria-sort='ascending']")
    assert page.eval_on_selector_all("#points tbody tr", "rs => rs.map(r => Number(r.dataset.id))") == sorted(
        ids
    )
    page.click("#points th[data-col='id']")
    page.wait_for_selector("#points th[data-col='id'][aria-sort='descending']")
    assert page.eval_on_selector_all("#points tbody tr", "rs => rs.map(r => Number(r.dataset.id))") == sorted(
        ids, reverse=True
    )
    shot(page, "04-task")


def test_segmented_task_has_a_sortable_segments_table_its_plot_and_paginated_points(web, page):
    tid = web.run_task("segmented", max_points=15, segments=[{"name": "barrel"}, {"name": "endcap"}])
    with web.http() as h:
        segs = h.get(f"/tasks/{tid}/segments", params={"sort": "best_loss"}).json()["items"]
    login(page, web)
    page.goto(f"{web.url}/ui/#/task/{tid}")
    page.wait_for_selector("#segments tbody tr")
    names = page.eval_on_selector_all("#segments tbody tr", "rs => rs.map(r => r.cells[1].innerText)")
    assert names == ["barrel", "endcap"]
    page.click("#segments th[data-col='best loss']")
    page.wait_for_selector("#segments th[data-col='best loss'][aria-sort='ascending']")
    names = page.eval_on_selector_all("#segments tbody tr", "rs => rs.map(r => r.cells[1].innerText)")
    assert names == [g["name"] for g in segs]
    page.wait_for_selector("#plot-segments .main-svg", timeout=60_000)
    assert "Best loss per segment" in page.inner_text("#plot-segments")
    # 30 points, 25 a page: the second page holds the 5 worst
    assert page.inner_text("#points .pager .muted") == "1–25 of 30"
    page.click("#points .pager button:has-text('next')")
    page.wait_for_selector("#points .pager .muted:has-text('26–30 of 30')")
    assert len(page.query_selector_all("#points tbody tr")) == 5
    # every plot box says it is being drawn, then shows its plot or why not: none is ever blank
    assert all(b.query_selector(".main-svg, .msg") for b in page.query_selector_all(".plot"))
    page.wait_for_function(
        "() => [...document.querySelectorAll('.plot')].every(b => b.querySelector('.main-svg, .msg:not(.loading)'))",
        timeout=60_000,
    )
    shot(page, "04b-segmented-task")


def test_open_a_point_its_mlflow_run_and_its_log(web, page):
    tid = web.tasks["single"]
    with web.http() as h:
        pts = h.get(f"/tasks/{tid}/points", params={"sort": "loss"}).json()["items"]
        deadline = time.monotonic() + 60  # the bridge makes the runs in the background
        while len(h.get(f"/tasks/{tid}/runs").json()["points"]) < len(pts) and time.monotonic() < deadline:
            time.sleep(0.3)
        runs = h.get(f"/tasks/{tid}/runs").json()
    best = pts[0]
    run = runs["points"][str(best["id"])]
    login(page, web)
    page.goto(f"{web.url}/ui/#/task/{tid}")
    page.wait_for_selector(f"#points tr[data-id='{best['id']}']")
    page.click(f"#points tr[data-id='{best['id']}']")
    page.wait_for_selector(f"#point-detail [data-point='{best['id']}']")
    assert "/point/" in page.url
    shown = dict(
        page.eval_on_selector_all(
            "#point-params tr", "rs => rs.map(r => [r.cells[0].innerText, r.cells[1].innerText])"
        )
    )
    assert set(shown) == set(best["params"])
    for k, v in best["params"].items():  # numbers to 4 significant digits
        assert shown[k] == v if isinstance(v, str) else float(shown[k]) == pytest.approx(v, rel=1e-3)
    link = page.get_attribute("#point-detail a.mlflow", "href")
    assert link == f"{runs['mlflow']}/#/experiments/{run['experiment_id']}/runs/{run['run_id']}"
    assert httpx.get(f"{runs['mlflow']}/api/2.0/mlflow/runs/get", params={"run_id": run["run_id"]}).json()[
        "run"
    ]["data"]["tags"]  # a real run of the MLflow server
    page.click("#point-detail button.log")
    page.wait_for_selector("#logs pre.log-text")
    assert f"loss {best['loss']:.4f}" in page.inner_text("#logs pre.log-text")  # the payload's own output
    page.wait_for_selector("#plot-importance .main-svg", timeout=30000)
    shot(page, "05-point")


def test_workflow_page_draws_the_dag_with_node_states_and_loop_iterations(web, page):
    user = User(web.server, web.token)
    definition = {
        "name": "ui-dag",
        "nodes": [
            hpo("search", max_points=3),
            job("train", inputs={"value": "${{ nodes.search.best.loss }}"}),
            {
                "name": "rounds",
                "kind": "loop",
                "max_iterations": 2,
                "while": True,
                "after": ["train"],
                "nodes": [job("step", inputs={"value": "${{ loop.iteration }}"})],
            },
            job("broken", inputs={"fail": True}),
            job("never", when=False),
        ],
    }
    wf = user.wait(
        user.submit(definition, web.payloads).id, timeout=120, agent_log=web.work / "agent" / "agent.log"
    )
    nodes = by_path(wf)
    login(page, web)
    page.goto(f"{web.url}/ui/#/workflow/{wf.id}")
    page.wait_for_selector("svg#dag g.node[data-name='rounds']")
    states = dict(
        page.eval_on_selector_all("svg#dag g.node", "gs => gs.map(g => [g.dataset.name, g.dataset.state])")
    )
    assert states == {n: nodes[n].state.value for n in ("search", "train", "rounds", "broken", "never")}
    assert states["search"] == states["train"] == states["rounds"] == "done"
    assert states["broken"] == "failed" and states["never"] == "skipped"
    edges = page.eval_on_selector_all(
        "svg#dag path.edge", "es => es.map(e => e.dataset.from + '>' + e.dataset.to)"
    )
    assert sorted(edges) == ["search>train", "train>rounds"]
    iters = page.eval_on_selector_all(
        "g.node[data-name='rounds'] g.iteration", "gs => gs.map(g => g.dataset.label)"
    )
    assert iters == ["#1", "#2"]
    kids = page.eval_on_selector_all(
        "g.node[data-name='rounds'] g.child", "gs => gs.map(g => g.dataset.path)"
    )
    assert kids == ["rounds#1.step", "rounds#2.step"]
    assert page.get_attribute("svg#dag g.node[data-name='broken'] rect", "class") == "fill-failed"
    page.click("svg#dag g.node[data-name='search'] a")
    page.wait_for_selector(f"#task-head h1:has-text('Task {nodes['search'].task_id}')")
    page.go_back()
    page.wait_for_selector("svg#dag")
    shot(page, "06-workflow")


def test_another_users_task_is_refused(web, page):
    bob = new_user(web.server, "bob-web")
    tid = web.tasks["single"]
    login(page, web, bob)
    page.wait_for_selector("#tasks tbody tr")
    assert page.query_selector(f"#tasks tr[data-id='{tid}']") is None
    assert "no tasks yet" in page.inner_text("#tasks")
    page.goto(f"{web.url}/ui/#/task/{tid}")
    page.wait_for_selector("#page-error")
    assert f"task {tid} does not exist (or is not yours)" in page.inner_text("#page-error")
    assert page.query_selector("#plot-history") is None
    shot(page, "07-refused")


def test_assets_are_served_from_the_package_with_gzip_and_nothing_from_outside(web, page):
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    login(page, web)
    page.goto(f"{web.url}/ui/#/task/{web.tasks['single']}")
    page.wait_for_selector("#plot-history .main-svg", timeout=30000)
    outside = [u for u in requested if not u.startswith(web.url) and not u.startswith("data:")]
    assert not outside, outside
    r = httpx.get(f"{web.url}/ui/plotly.min.js", headers={"Accept-Encoding": "gzip"})
    assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
    assert httpx.get(f"{web.url}/ui/..%2Fapp.js").status_code == 404
    assert httpx.get(f"{web.url}/ui/nope.js").status_code == 404


def test_mlflow_links_appear_without_a_reload_when_the_runs_come_late(tmp_path_factory, page):
    """MLflow is down while a task runs, so its points' runs are made only once MLflow is up,
    after the task's counts stopped changing: the open task page shows their links without a
    reload (it used to look the runs up only when the counts changed, and showed "–" for good)."""
    root = tmp_path_factory.mktemp("ui-mlflow-late")
    port = free_port()
    stack, agent = make_stack(tmp_path_factory, "--mlflow-uri", f"http://127.0.0.1:{port}")
    mlflow = None
    try:
        tid = stack.run_task("late", max_points=3)
        login(page, stack)
        page.goto(f"{stack.url}/ui/#/task/{tid}")
        page.wait_for_function("() => document.querySelectorAll('#points tbody tr[data-id]').length === 3")
        assert page.locator("#points a.mlflow").count() == 0  # no run yet: MLflow is down
        mlflow = start_mlflow(root, port)
        page.wait_for_function(
            "() => document.querySelectorAll('#points a.mlflow').length === 3", timeout=180_000
        )
        with stack.http() as h:
            runs = h.get(f"/tasks/{tid}/runs").json()
        links = page.eval_on_selector_all("#points a.mlflow", "as => as.map(a => a.href)")
        assert sorted(links) == sorted(r["url"] for r in runs["points"].values())
    finally:
        stop_agent(agent)
        stack.server.stop()
        if mlflow is not None:
            stop_agent(mlflow)
