"""Throughput: completed evaluations per second with zero-length payloads (issue 9 §2).
Goal: >= 1,000 evaluations/s on PostgreSQL.

For 1, 4, 16 and 64 concurrent agent slots, on SQLite and on PostgreSQL (a fresh database per
run), one task with the ``random`` optimizer, ``nParallelEvaluation`` = 2 x slots (so a ready
point waits for every free slot) and ``nPointsPerIteration`` = the same, ``maxPoints`` = M. The
rate is M / (task created -> finished), both stamped by the server. Two kinds of agent:

- ``spawn`` (M/2 evaluations): the real agent (``--slots k``) running the shell payload
  ``echo '{"status":0,"loss":0}' > output.json``: a process spawn per evaluation, as a user
  gets it;
- ``http``: k threads in this process that lease a job and complete it at once over HTTP,
  spawning nothing: what the server alone sustains (its load generator shares the 2 cores).

The peer: the same count M of ask/tell cycles by Optuna (random sampler) against a fresh
database on the same PostgreSQL, with k threads (``benchmarks/peers/optuna_asktell.py``, in
``benchmarks/.peers-venv``).

Every run is bounded: M evaluations or ``--run-seconds`` (then the task is cancelled and the
rate is taken over what was evaluated).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    PhpoAgent,
    PhpoServer,
    busy_cpu_elsewhere,
    fresh_pg_database,
    http_agent_loop,
    log,
    machine,
    pg_available,
    print_table,
    ratio,
    run_peer,
    run_task,
    save_result,
    workdir,
)

PAYLOAD = 'echo \'{"status":0,"loss":0}\' > output.json'
SPACE = {"x": {"type": "float", "low": 0.0, "high": 1.0}}


def spec(m: int, slots: int, per_job: int = 1) -> dict:
    n = 2 * slots * per_job
    return {
        "outDS": "bench-throughput",
        "evaluationExec": PAYLOAD,
        "searchSpace": SPACE,
        "optimizer": "random",
        "optimizerOptions": {"seed": 0},
        "nParallelEvaluation": n,
        "nPointsPerIteration": n,
        "maxPoints": m,
        "maxPointsPerEvaluationJob": per_job,
    }


def measure(
    mode: str, slots: int, m: int, database_url: str | None, run_seconds: float, per_job: int = 1
) -> dict:
    with workdir("throughput") as d, PhpoServer(d / "server", database_url) as srv:
        client = srv.client()
        cpu0 = srv.cpu_seconds()
        if mode == "spawn":
            with PhpoAgent(srv, slots, d / "agent"):
                run = run_task(client, run_seconds, poll=0.25, **spec(m, slots, per_job))
            loop = None
        else:
            stop = threading.Event()
            box: dict = {}
            t = threading.Thread(
                target=lambda: box.setdefault(
                    "s",
                    http_agent_loop(
                        srv.url, srv.agent_token, slots, stop, time.monotonic() + run_seconds + 30
                    ),
                ),
                daemon=True,
            )
            t.start()
            try:
                run = run_task(client, run_seconds, poll=0.25, **spec(m, slots, per_job))
            finally:
                stop.set()
                t.join(90)
            loop = box.get("s")
        cpu = srv.cpu_seconds() - cpu0
        client.close()
    done = run.evaluated
    out = {
        "mode": mode if per_job == 1 else f"{mode}, {per_job} points/job",
        "slots": slots,
        "m": m,
        "evaluated": done,
        "failed": run.failed,
        "wall_s": run.wall_s,
        "state": run.state,
        "timed_out": run.timed_out,
        "server_cpu_s": cpu,
        "rate": done / run.wall_s if run.wall_s > 0 else None,
        "server_cpu_ms_per_eval": 1000 * cpu / done if done else None,
    }
    if loop is not None:
        out.update(
            {"empty_acquires": loop.empty_acquires, "errors": loop.errors, "first_error": loop.first_error}
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", type=int, default=2000, help="evaluations per run (default 2000)")
    ap.add_argument("--quick", action="store_true", help="M = 200, 16 slots")
    ap.add_argument("--slots", type=int, action="append", help="slot counts (default 1 4 16 64)")
    ap.add_argument("--mode", action="append", choices=["http", "spawn"], help="default both")
    ap.add_argument("--db", action="append", choices=["sqlite", "postgresql"], help="default both")
    ap.add_argument("--run-seconds", type=float, default=150.0, help="bound of one run (default 150)")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument(
        "--points-per-job",
        type=int,
        action="append",
        help="maxPointsPerEvaluationJob values (default 1; e.g. 16 batches 16 points per lease)",
    )
    ap.add_argument(
        "--batch",
        type=int,
        default=None,
        help="also run the http agent with 16 slots and this many points per job on each database "
        "(default 64: 64 points per lease, 10,000 evaluations; 0 = no)",
    )
    ap.add_argument("--tag", default="", help="suffix of the results file name (keeps experiments apart)")
    args = ap.parse_args(argv)
    m = 200 if args.quick and args.m == 2000 else args.m
    slot_list = args.slots or ([16] if args.quick else [1, 4, 16, 64])
    batch = args.batch if args.batch is not None else 64
    modes = args.mode or ["http", "spawn"]
    pg = pg_available()
    dbs = args.db or ["sqlite", "postgresql"]
    if "postgresql" in dbs and pg:
        log(f"PostgreSQL skipped: {pg}")
        dbs = [d for d in dbs if d != "postgresql"]
    info = machine()
    info["busy_before"] = busy_cpu_elsewhere()

    runs: list[dict] = []
    for db in dbs:
        for mode in modes:
            for per_job in args.points_per_job or [1]:
                for slots in slot_list:
                    # a process per evaluation is slower: half the count keeps the run short
                    mm = m if mode == "http" else max(100, m // 2)
                    log(f"phpo {db} {mode} {slots} slot(s), {per_job} point(s)/job, {mm} evaluations")
                    if db == "sqlite":
                        r = measure(mode, slots, mm, None, args.run_seconds, per_job)
                    else:
                        with fresh_pg_database("phpo_bench_tp") as url:
                            r = measure(mode, slots, mm, url, args.run_seconds, per_job)
                    runs.append({"system": "phpo", "database": db, **r})
    if batch > 1:
        for db in dbs:
            log(f"phpo {db} http 16 slots, {batch} points/job, {max(m, 10000)} evaluations")
            if db == "sqlite":
                r = measure("http", 16, max(m, 10000), None, args.run_seconds, batch)
            else:
                with fresh_pg_database("phpo_bench_tp") as url:
                    r = measure("http", 16, max(m, 10000), url, args.run_seconds, batch)
            runs.append({"system": "phpo", "database": db, **r})
    if not args.no_peers and not pg:
        for slots in slot_list:
            with fresh_pg_database("phpo_bench_optuna_tp") as url:
                log(f"Optuna ask/tell on PostgreSQL, {slots} thread(s), {m} cycles")
                r = run_peer(
                    "optuna_asktell.py",
                    [
                        "--n",
                        str(m),
                        "--workers",
                        str(slots),
                        "--storage",
                        url.replace("postgresql://", "postgresql+psycopg://"),
                        "--seconds",
                        str(args.run_seconds),
                    ],
                    timeout=args.run_seconds + 120,
                )
                runs.append(
                    {"system": "Optuna", "database": "postgresql", "mode": "ask/tell", "slots": slots, **r}
                )
    info["busy_after"] = busy_cpu_elsewhere()

    optuna = {r["slots"]: r.get("rate") for r in runs if r["system"] == "Optuna"}
    rows = []
    for r in runs:
        if "error" in r:
            rows.append([r["system"], r["database"], r["mode"], r["slots"], "-", "-", "-", r["error"][:80]])
            continue
        vs = (
            ratio(r.get("rate"), optuna.get(r["slots"]))
            if r["system"] == "phpo" and r["database"] == "postgresql"
            else None
        )
        rows.append(
            [
                r["system"],
                r["database"],
                r["mode"],
                r["slots"],
                r.get("evaluated", r.get("completed")),
                r.get("rate"),
                r.get("server_cpu_ms_per_eval"),
                f"{vs:.2f}x" if vs is not None else "",
            ]
        )
    table = print_table(
        f"Throughput, evaluations/s with zero-length payloads (loadavg {info['loadavg']})",
        [
            "system",
            "database",
            "agent",
            "slots",
            "evaluated",
            "evals/s",
            "server CPU ms/eval",
            "phpo / Optuna (PG)",
        ],
        rows,
    )
    save_result("throughput" + args.tag, {"machine": info, "m": m, "runs": runs, "table": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
