"""Replicas: evaluations per second with 1, 2 and 3 ``phpo server`` processes on one PostgreSQL
(the Helm chart's server.replicas), zero-length payloads, one point per lease; and the same with
``maxPointsPerEvaluationJob`` 64.

Each run: a fresh PostgreSQL database, N servers on it (the first takes the HPO manager's lock),
one task with the ``random`` optimizer, ``nParallelEvaluation`` = 2 x slots, and ``--slots`` HTTP
agent slots (threads of this process that lease a job and complete it at once) split evenly over
the replicas, as a load balancer would spread agents. The rate is M / (task created -> finished),
stamped by the server; CPU per evaluation is the user + system time of every server process
together over the run, divided by the evaluations. On a machine with few cores the replicas, the
load generator and PostgreSQL share them: more replicas add no cores, so the figure to read is
the CPU per evaluation (what a replica costs) next to the rate.

    .venv/bin/python benchmarks/replicas.py [--m 2000] [--slots 16] [--replicas 1 --replicas 3]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from contextlib import ExitStack
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
from throughput import spec


def measure(n_replicas: int, slots: int, m: int, per_job: int, run_seconds: float) -> dict:
    with fresh_pg_database("phpo_bench_rep") as url, workdir("replicas") as d, ExitStack() as stack:
        servers = [stack.enter_context(PhpoServer(d / f"server{i}", url)) for i in range(n_replicas)]
        cpu0 = [s.cpu_seconds() for s in servers]
        stop = threading.Event()
        loops: list = []
        share = [slots // n_replicas + (1 if i < slots % n_replicas else 0) for i in range(n_replicas)]
        threads = []
        for srv, k in zip(servers, share, strict=True):
            box: dict = {}
            loops.append(box)
            t = threading.Thread(
                target=lambda srv=srv, k=k, box=box: box.setdefault(
                    "s",
                    http_agent_loop(srv.url, srv.agent_token, k, stop, time.monotonic() + run_seconds + 30),
                ),
                daemon=True,
            )
            t.start()
            threads.append(t)
        client = servers[-1].client()  # submitted through a replica that does not run the manager
        try:
            run = run_task(client, run_seconds, poll=0.25, **spec(m, slots, per_job))
        finally:
            stop.set()
            for t in threads:
                t.join(90)
            client.close()
        cpu = sum(s.cpu_seconds() - c0 for s, c0 in zip(servers, cpu0, strict=True))
        per_replica = [box["s"].completed if "s" in box else None for box in loops]
        empty = sum(box["s"].empty_acquires for box in loops if "s" in box)
    done = run.evaluated
    return {
        "replicas": n_replicas,
        "slots": slots,
        "points_per_job": per_job,
        "m": m,
        "evaluated": done,
        "failed": run.failed,
        "state": run.state,
        "timed_out": run.timed_out,
        "wall_s": run.wall_s,
        "rate": done / run.wall_s if run.wall_s > 0 else None,
        "server_cpu_s": cpu,
        "server_cpu_ms_per_eval": 1000 * cpu / done if done else None,
        "evaluated_per_replica": per_replica,
        "empty_acquires": empty,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", type=int, default=2000, help="evaluations per run with one point per lease")
    ap.add_argument("--batch-m", type=int, default=10000, help="evaluations per run with 64 points per lease")
    ap.add_argument("--slots", type=int, default=16, help="agent slots in all, split over the replicas")
    ap.add_argument("--replicas", type=int, action="append", help="replica counts (default 1 2 3)")
    ap.add_argument("--run-seconds", type=float, default=150.0, help="bound of one run")
    args = ap.parse_args(argv)
    if reason := pg_available():
        print(f"replicas benchmark needs PostgreSQL: {reason}", file=sys.stderr)
        return 1
    counts = args.replicas or [1, 2, 3]
    info = machine()
    info["busy_before"] = busy_cpu_elsewhere()
    runs = []
    for per_job, m in ((1, args.m), (64, args.batch_m)):
        for n in counts:
            log(f"{n} replica(s), {args.slots} slots, {per_job} point(s)/lease, {m} evaluations")
            runs.append(measure(n, args.slots, m, per_job, args.run_seconds))
    info["busy_after"] = busy_cpu_elsewhere()
    base = {r["points_per_job"]: r["rate"] for r in runs if r["replicas"] == counts[0]}
    rows = [
        [
            r["replicas"],
            r["points_per_job"],
            r["evaluated"],
            r["rate"],
            r["server_cpu_ms_per_eval"],
            f"{ratio(r['rate'], base[r['points_per_job']]):.2f}x" if base.get(r["points_per_job"]) else "",
            "/".join(str(x) for x in r["evaluated_per_replica"]),
        ]
        for r in runs
    ]
    table = print_table(
        f"Replicas on one PostgreSQL, {args.slots} HTTP agent slots (loadavg {info['loadavg']})",
        [
            "replicas",
            "points/lease",
            "evaluated",
            "evals/s",
            "server CPU ms/eval",
            f"vs {counts[0]} replica",
            "evaluated per replica",
        ],
        rows,
    )
    save_result("replicas", {"machine": info, "runs": runs, "table": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
