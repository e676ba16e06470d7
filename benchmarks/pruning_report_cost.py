"""What one intermediate report costs on the server, pruning on vs off, in the same run.

In process, on a real database (a SQLite file or a fresh PostgreSQL database): the server's own
``JobBroker`` (the ``/jobs/{id}/heartbeat`` route's body: it stores the intermediate value and,
for a task with a pruner, runs the pruning decision). Two tasks of the same shape run side by
side, one with ``pruner`` = ``none`` and one with the pruner under test; the agents are scripted
(no HTTP, no subprocess): they lease one point per job, report one value per heartbeat, send the
result at the last step and end the job when the answer says stop. Leases come from whichever
task the broker picks, so the two tasks' reports interleave and share the machine's load.

Printed: median and p90 of the heartbeat's time per report for each task (wall clock, and the
CPU time of the calling thread, which other processes' load inflates less; for PostgreSQL the
database server's own CPU is not in it), SQL statements per heartbeat, their difference (what
pruning adds) and ratio. ``--profile`` runs the pruned task's heartbeats under cProfile and
prints the functions with most time.

    .venv/bin/python benchmarks/pruning_report_cost.py --db sqlite
    .venv/bin/python benchmarks/pruning_report_cost.py --db postgresql --pruner asha
    .venv/bin/python benchmarks/pruning_report_cost.py --db sqlite --profile
    .venv/bin/python benchmarks/pruning_report_cost.py --db sqlite --dir /dev/shm   # no disk flushes
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

OPTIONS = {
    "median": {"n_startup_trials": 5, "n_warmup_steps": 2},
    "percentile": {"percentile": 25.0, "n_startup_trials": 5, "n_warmup_steps": 2},
    "asha": {"min_resource": 1, "reduction_factor": 3},
    "hyperband": {"min_resource": 1, "max_resource": 30, "reduction_factor": 3},
    "wilcoxon": {"p_threshold": 0.1},
}


def curve(serial: int, step: int) -> float:
    """A learning curve per point: a level that depends on the point, plus a decaying term."""
    level = (serial * 7919 % 13) / 13.0
    return level + 1.0 / (step + 1)


def quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


def run(
    url: str,
    pruner: str,
    points: int,
    steps: int,
    parallel: int,
    data_dir: Path,
    profile: cProfile.Profile | None,
) -> dict[str, list[float]]:
    from phpo.schemas.api import Role
    from phpo.schemas.jobs import (
        AcquireRequest,
        CompleteRequest,
        HeartbeatRequest,
        IntermediateReport,
        PointResult,
    )
    from phpo.schemas.tasks import TaskSpec
    from phpo.server.auth.identity import Caller
    from phpo.server.db.engine import Database, utcnow
    from phpo.server.db.tables import PointRow
    from phpo.server.services.job_broker import JobBroker
    from phpo.server.services.tasks import insert_task
    from phpo.server.settings import Settings
    from sqlalchemy import event

    agent = Caller(name="agent", role=Role.agent)
    db = Database(url)
    db.migrate()
    broker = JobBroker(db, Settings(data_dir=data_dir, database_url=url))
    statements = [0]
    event.listen(db.engine, "before_cursor_execute", lambda *a: statements.__setitem__(0, statements[0] + 1))
    tasks: dict[int, str] = {}
    for name in ("none", pruner):
        ts = TaskSpec.model_validate(
            {
                "evaluationExec": "true",
                "optimizer": "random",
                "maxPoints": points,
                "nParallelEvaluation": parallel,
                "maxPointsPerEvaluationJob": 1,
                "searchSpace": {"x": {"method": "uniform", "dimension": {"low": 0.0, "high": 1.0}}},
                "pruner": name,
                "prunerOptions": OPTIONS.get(name, {}),
            }
        )
        with db.write() as s:
            task = insert_task(s, "bench", ts)
            now = utcnow()
            for i in range(points):
                s.add(
                    PointRow(
                        task_id=task.id,
                        segment_idx=0,
                        serial=i,
                        params={"x": i / points},
                        state="ready",
                        attempts=0,
                        intermediate=[],
                        created_at=now,
                        updated_at=now,
                    )
                )
            tasks[task.id] = "off" if name == "none" else "on"
    cost: dict[str, list[float]] = {
        "off": [],
        "on": [],
        "cpu off": [],
        "cpu on": [],
        "sql off": [],
        "sql on": [],
    }
    held: dict[int, dict] = {}  # job id -> {task, point, serial, step}
    pruned = 0
    try:
        while True:
            while len(held) < 2 * parallel:
                job = broker.acquire(agent, AcquireRequest(agent="a1", site="local", kinds=["evaluation"]))
                if job is None:
                    break
                (p,) = job.points
                held[job.id] = {"task": job.task_id, "point": p.point_id, "serial": p.serial, "step": 0}
            if not held:
                break
            for jid in sorted(held):
                h = held[jid]
                req = HeartbeatRequest(
                    intermediate=[
                        IntermediateReport(
                            point_id=h["point"], step=h["step"], value=curve(h["serial"], h["step"])
                        )
                    ]
                )
                on = tasks[h["task"]] == "on"
                if on and profile is not None:
                    profile.enable()
                n0, c0, t0 = statements[0], time.thread_time(), time.perf_counter()
                ans = broker.heartbeat(agent, jid, req)
                dt = time.perf_counter() - t0
                cost["cpu " + tasks[h["task"]]].append(time.thread_time() - c0)
                cost["sql " + tasks[h["task"]]].append(statements[0] - n0)
                if on and profile is not None:
                    profile.disable()
                cost[tasks[h["task"]]].append(dt)
                if h["point"] in ans.stop_points:
                    pruned += 1
                    broker.complete(agent, jid, CompleteRequest())
                    del held[jid]
                    continue
                h["step"] += 1
                if h["step"] == steps:
                    broker.complete(
                        agent,
                        jid,
                        CompleteRequest(
                            results=[
                                PointResult(point_id=h["point"], status=0, loss=curve(h["serial"], steps - 1))
                            ]
                        ),
                    )
                    del held[jid]
    finally:
        db.dispose()
    print(f"  {pruned} of {points} points pruned")
    return cost


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--pruner", choices=sorted(OPTIONS), default="median")
    ap.add_argument("--points", type=int, default=60)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--parallel", type=int, default=4, help="points in flight per task")
    ap.add_argument("--profile", action="store_true", help="cProfile the pruned task's heartbeats")
    ap.add_argument("--dir", default=None, help="where the SQLite file goes (e.g. /dev/shm: no disk flushes)")
    a = ap.parse_args()
    prof = cProfile.Profile() if a.profile else None
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp, contextlib.ExitStack() as stack:
        if a.db == "sqlite":
            url = f"sqlite:///{Path(tmp) / 'phpo.db'}"
        else:
            from _harness import fresh_pg_database

            url = stack.enter_context(fresh_pg_database("phpo_bench_prune"))
        print(
            f"{a.db}, pruner {a.pruner} {OPTIONS[a.pruner]}, {a.points} points x {a.steps} steps per task, "
            f"{a.parallel} in flight per task"
        )
        t = time.monotonic()
        cost = run(url, a.pruner, a.points, a.steps, a.parallel, Path(tmp), prof)
        wall = time.monotonic() - t
    print(
        "| heartbeat with one report | reports | statements | wall median ms | wall p90 ms "
        "| CPU median ms | CPU p90 ms |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, k in (("pruner none (off)", "off"), (f"pruner {a.pruner} (on)", "on")):
        xs, cs = cost[k], cost["cpu " + k]
        print(
            f"| {label} | {len(xs)} | {statistics.median(cost['sql ' + k]):.0f} | {statistics.median(xs) * 1e3:.3f} "
            f"| {quantile(xs, 0.9) * 1e3:.3f} | {statistics.median(cs) * 1e3:.3f} | {quantile(cs, 0.9) * 1e3:.3f} |"
        )
    for what, on, off in (("wall", cost["on"], cost["off"]), ("CPU", cost["cpu on"], cost["cpu off"])):
        m_on, m_off = statistics.median(on), statistics.median(off)
        print(
            f"added by pruning per report ({what}): median {(m_on - m_off) * 1e3:.3f} ms, "
            f"p90 {(quantile(on, 0.9) - quantile(off, 0.9)) * 1e3:.3f} ms; ratio on/off {m_on / m_off:.2f} "
            f"(median), {quantile(on, 0.9) / quantile(off, 0.9):.2f} (p90)"
        )
    print(f"wall {wall:.0f} s")
    if prof is not None:
        out = io.StringIO()
        st = pstats.Stats(prof, stream=out)
        st.sort_stats("cumulative").print_stats(35)
        st.sort_stats("tottime").print_stats(20)
        print(out.getvalue())


if __name__ == "__main__":
    main()
