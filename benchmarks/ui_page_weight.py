"""Page weight of the web view (/ui/): the bytes a first visit transfers, and how much is plotly.js.

A real server and agent run one small task to its end; headless Chromium (Debian's, driven by
Playwright, empty cache) then opens the tasks list with a ``?token=`` link and the task page
(four plots; plotly.js is loaded only when a page draws a plot). Every response is counted as transferred (``encoded`` = on the wire, gzip where the
server compresses) and as decoded. The peer, measured in the same run: the MLflow UI's first
visit of the same task's experiment (the runs table), from a real ``mlflow server``.

    .venv/bin/python benchmarks/ui_page_weight.py [--no-mlflow] [--points 12]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (  # noqa: E402
    PYTHON,
    PhpoAgent,
    PhpoServer,
    _stop,
    fmt,
    free_port,
    log,
    machine,
    print_table,
    ratio,
    run_task,
    save_result,
    workdir,
)

PAYLOAD = textwrap.dedent("""
    import json
    p = json.load(open("input.json"))
    json.dump({"status": 0, "loss": (p["x"] - 1) ** 2 + p["y"]}, open("output.json", "w"))
""")


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    raise SystemExit("no chromium binary: `make chromium` installs Debian's")


def visit(browser: Any, urls: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Open each (url, selector to wait for) in one fresh context (empty cache); each response's
    transferred and decoded size."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    requests: list[Any] = []
    page.on("requestfinished", lambda r: requests.append(r))
    for url, selector in urls:
        page.goto(url)
        try:
            page.wait_for_selector(selector, timeout=60_000)
        except Exception:
            page.screenshot(path="/tmp/ui-weight-failed.png", full_page=True)
            raise
        page.wait_for_timeout(3000)  # what loads after the first paint (both UIs poll, so never "idle")
    out = []
    for r in requests:
        sizes = r.sizes()
        resp = r.response()
        decoded = len(resp.body()) if resp is not None and r.method == "GET" else 0
        out.append(
            {
                "url": r.url,
                "encoded": sizes["responseBodySize"] + sizes["responseHeadersSize"],
                "body": sizes["responseBodySize"],
                "decoded": decoded,
            }
        )
    ctx.close()
    return out


def summarize(rows: list[dict[str, Any]], heavy: str) -> dict[str, Any]:
    total = sum(r["encoded"] for r in rows)
    big = [r for r in rows if heavy in r["url"]]
    return {
        "requests": len(rows),
        "transferred_bytes": total,
        "decoded_bytes": sum(r["decoded"] for r in rows),
        "heavy_transferred_bytes": sum(r["encoded"] for r in big),
        "heavy_decoded_bytes": sum(r["decoded"] for r in big),
    }


def start_mlflow(root: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    logf = open(root / "mlflow.log", "wb")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'm.db'}",
            "--artifacts-destination",
            str(root / "art"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=logf,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(uri + "/health", timeout=1).status_code == 200:
                return proc, uri
        except httpx.TransportError:
            time.sleep(0.3)
    _stop(proc)
    raise RuntimeError("mlflow server did not start within 120 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=12)
    ap.add_argument("--no-mlflow", action="store_true", help="skip the MLflow UI peer")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with workdir("ui-weight") as d:
        mlflow, uri = (None, None) if args.no_mlflow else start_mlflow(d)
        try:
            payload = d / "payload.py"
            payload.write_text(PAYLOAD)
            extra = ["--manager-interval", "0.3"] + (["--mlflow-uri", uri] if uri else [])
            with PhpoServer(d / "server", extra=extra) as srv, PhpoAgent(srv, 2, d / "agent"):
                with srv.client() as c:
                    run = run_task(
                        c,
                        300,
                        evaluationExec=f"{PYTHON} {payload}",
                        optimizer="optuna.random",
                        maxPoints=args.points,
                        nParallelEvaluation=2,
                        searchSpace={
                            "x": {"type": "float", "low": -2, "high": 3},
                            "y": {"type": "float", "low": 0, "high": 1},
                        },
                    )
                assert run.state == "finished", run
                log(f"task {run.task_id} finished with {run.evaluated} points")
                ui = f"{srv.url}/ui/"
                with sync_playwright() as p:
                    browser = p.chromium.launch(
                        executable_path=_chromium(), args=["--no-sandbox", "--disable-gpu"]
                    )
                    try:
                        first = visit(
                            browser, [(f"{ui}?token={srv.user_token}", f"#tasks tr[data-id='{run.task_id}']")]
                        )
                        task = visit(
                            browser,
                            [
                                (f"{ui}?token={srv.user_token}", "#tasks tbody tr"),
                                (f"{ui}#/task/{run.task_id}", "#plot-importance .main-svg"),
                            ],
                        )
                        peer = None
                        if uri:
                            from mlflow.tracking import MlflowClient

                            deadline = time.monotonic() + 60
                            exp = None
                            while exp is None and time.monotonic() < deadline:
                                exp = MlflowClient(uri).get_experiment_by_name(f"task-{run.task_id}")
                                time.sleep(0.5)
                            if exp is not None:
                                peer = visit(
                                    browser,
                                    [(f"{uri}/#/experiments/{exp.experiment_id}/runs", "text=Run Name")],
                                )
                    finally:
                        browser.close()
        finally:
            _stop(mlflow)
    res: dict[str, Any] = {
        "machine": machine(),
        "points": args.points,
        "first_visit": summarize(first, "plotly.min.js"),
        "task_page": summarize(task, "plotly.min.js"),
    }
    if peer:
        res["mlflow_first_visit"] = summarize(peer, ".js")
    f, t = res["first_visit"], res["task_page"]
    rows = [
        [
            "phpo /ui/ first visit (tasks list)",
            f["requests"],
            fmt(f["transferred_bytes"] / 1e3),
            fmt(f["decoded_bytes"] / 1e3),
            fmt(f["heavy_transferred_bytes"] / 1e3),
            fmt(100 * f["heavy_transferred_bytes"] / f["transferred_bytes"]) + " %",
        ],
        [
            "phpo /ui/ + task page (4 plots)",
            t["requests"],
            fmt(t["transferred_bytes"] / 1e3),
            fmt(t["decoded_bytes"] / 1e3),
            fmt(t["heavy_transferred_bytes"] / 1e3),
            fmt(100 * t["heavy_transferred_bytes"] / t["transferred_bytes"]) + " %",
        ],
    ]
    if peer:
        m = res["mlflow_first_visit"]
        rows.append(
            [
                "MLflow UI first visit (runs table)",
                m["requests"],
                fmt(m["transferred_bytes"] / 1e3),
                fmt(m["decoded_bytes"] / 1e3),
                fmt(m["heavy_transferred_bytes"] / 1e3) + " (all JS)",
                fmt(100 * m["heavy_transferred_bytes"] / m["transferred_bytes"]) + " %",
            ]
        )
        res["ratio_list_to_mlflow"] = ratio(f["transferred_bytes"], m["transferred_bytes"])
        res["ratio_task_page_to_mlflow"] = ratio(t["transferred_bytes"], m["transferred_bytes"])
    print_table(
        "Web view page weight (empty cache)",
        ["visit", "requests", "transferred kB", "decoded kB", "plotly.js kB (wire)", "share"],
        rows,
    )
    if peer:
        print(
            f"bytes on the wire, phpo / MLflow first visit: tasks list {fmt(res['ratio_list_to_mlflow'])}, "
            f"tasks list + task page with plots {fmt(res['ratio_task_page_to_mlflow'])}"
        )
    save_result("ui_page_weight", res)


if __name__ == "__main__":
    main()
