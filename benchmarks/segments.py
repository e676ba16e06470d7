"""Segmented HPO at scale (issue 6, Benchmark): 10, 100 and 300 segments x 20 points with
instant payloads; server CPU time per evaluation and wall time per evaluation must stay flat as
segments grow. Goal: the 300-segment figure <= 1.2 x the 10-segment one.

One task per run: ``segments`` = S names, one search space cloned over them, the ``random``
optimizer, ``maxPoints`` 20 and ``nParallelEvaluation`` 2 per segment (so up to 2·S points are
in flight). The evaluations are done by the HTTP-only agent loop of ``throughput.py`` (16
slots; lease and complete at once, no process spawned), so what is measured is the server:
its CPU time (psutil, user + system, all threads) over the run, and the task's
``created_at`` -> ``finished_at``, divided by the evaluations done.

    python benchmarks/segments.py            # 10, 100, 300 segments x 20 points
    python benchmarks/segments.py --quick    # the same with 3 points per segment
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    PhpoServer,
    busy_cpu_elsewhere,
    fresh_pg_database,
    http_agent_loop,
    log,
    machine,
    pg_available,
    print_table,
    ratio,
    run_task,
    save_result,
    workdir,
)

SPACE = {"x": {"type": "float", "low": 0.0, "high": 1.0}}
SLOTS = 16


def measure(n_segments: int, points: int, database_url: str | None, run_seconds: float) -> dict:
    with workdir("segments") as d, PhpoServer(d / "server", database_url) as srv:
        client = srv.client()
        stop = threading.Event()
        box: dict = {}
        loop = threading.Thread(
            target=lambda: box.setdefault(
                "s",
                http_agent_loop(srv.url, srv.agent_token, SLOTS, stop, time.monotonic() + run_seconds + 30),
            ),
            daemon=True,
        )
        cpu0 = srv.cpu_seconds()
        loop.start()
        try:
            run = run_task(
                client,
                run_seconds,
                poll=0.5,
                outDS=f"bench-segments-{n_segments}",
                evaluationExec="true",
                searchSpace=SPACE,
                optimizer="random",
                segments=[{"name": f"seg{i:03d}"} for i in range(n_segments)],
                maxPoints=points,
                nParallelEvaluation=2,
                nPointsPerIteration=2,
            )
        except Exception as e:  # noqa: BLE001 - a server that refuses segments is a finding, not a crash
            stop.set()
            return {"segments": n_segments, "error": f"{type(e).__name__}: {e}"}
        finally:
            stop.set()
            loop.join(90)
        cpu = srv.cpu_seconds() - cpu0
        segs = list(client.segments(run.task_id)) if run.evaluated else []
        client.close()
    done = run.evaluated + run.failed
    stats = box.get("s")
    out = {
        "segments": n_segments,
        "points_per_segment": points,
        "evaluated": run.evaluated,
        "failed": run.failed,
        "state": run.state,
        "timed_out": run.timed_out,
        "wall_s": run.wall_s,
        "server_cpu_s": cpu,
        "segments_finished": sum(
            1
            for g in segs
            if getattr(g, "finished", False)
            or str(getattr(g, "state", "")) in ("finished", "SegmentState.finished")
        ),
        "loop_errors": stats.errors if stats else None,
        "first_error": stats.first_error if stats else None,
    }
    if done:
        out["cpu_ms_per_eval"] = 1000 * cpu / done
        out["wall_ms_per_eval"] = 1000 * run.wall_s / done
    if run.state != "finished" or done < n_segments * points:
        out["error"] = (
            f"task {run.state}{' (timed out)' if run.timed_out else ''}: {done} of "
            f"{n_segments * points} evaluations"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--segments", type=int, action="append", help="segment counts (default 10 100 300)")
    ap.add_argument("--points", type=int, default=20, help="points per segment (default 20)")
    ap.add_argument("--quick", action="store_true", help="3 points per segment")
    ap.add_argument("--pg", action="store_true", help="PostgreSQL instead of SQLite")
    ap.add_argument("--run-seconds", type=float, default=420.0, help="bound of one run (default 420)")
    ap.add_argument("--tag", default="", help="suffix of the results file name (keeps experiments apart)")
    args = ap.parse_args(argv)
    counts = args.segments or [10, 100, 300]
    points = 3 if args.quick and args.points == 20 else args.points
    info = machine()
    info["busy_before"] = busy_cpu_elsewhere()
    db = "sqlite"
    if args.pg:
        why = pg_available()
        if why:
            log(f"PostgreSQL not reachable ({why}); using SQLite")
        else:
            db = "postgresql"
    runs = []
    for s in counts:
        log(f"{s} segments x {points} points on {db}")
        if db == "postgresql":
            with fresh_pg_database("phpo_bench_seg") as url:
                runs.append(measure(s, points, url, args.run_seconds))
        else:
            runs.append(measure(s, points, None, args.run_seconds))
        if runs[-1].get("error") and not runs[-1].get("evaluated"):
            log(f"segmented task did not run: {runs[-1]['error']}")
    info["busy_after"] = busy_cpu_elsewhere()
    base = runs[0]
    rows = []
    for r in runs:
        rows.append(
            [
                r["segments"],
                r.get("evaluated"),
                r.get("cpu_ms_per_eval"),
                r.get("wall_ms_per_eval"),
                ratio(r.get("cpu_ms_per_eval"), base.get("cpu_ms_per_eval")),
                ratio(r.get("wall_ms_per_eval"), base.get("wall_ms_per_eval")),
                r.get("error", "")[:70],
            ]
        )
    table = print_table(
        f"Segments x {points} points, instant payloads, {db} (loadavg {info['loadavg']})",
        [
            "segments",
            "evaluated",
            "server CPU ms/eval",
            "wall ms/eval",
            f"CPU vs {counts[0]}",
            f"wall vs {counts[0]}",
            "note",
        ],
        rows,
    )
    last = runs[-1]
    verdict = ratio(last.get("cpu_ms_per_eval"), base.get("cpu_ms_per_eval"))
    if verdict is not None:
        print(
            f"{last['segments']} vs {base['segments']} segments: server CPU/eval x{verdict:.2f}, wall/eval "
            f"x{ratio(last.get('wall_ms_per_eval'), base.get('wall_ms_per_eval')):.2f} (goal <= 1.2)"
        )
    save_result(
        "segments" + args.tag,
        {"machine": info, "database": db, "points": points, "runs": runs, "table": table},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
