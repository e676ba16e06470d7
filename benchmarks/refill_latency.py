"""Refill latency: from a point's result arriving at the server to the next point's payload
starting (issue 9 §3). Goal: p50 <= 100 ms.

Method. The payload's first act is to read the clock (``date +%s.%N``) and it writes that
instant into its output metrics (``metrics.start``); the server stamps ``evaluated_at`` on a
point in the transaction that takes its result. Server, agent and payload share this machine's
clock, so the two instants compare directly.

- 1 slot (the headline): ``nParallelEvaluation`` 1 and an agent with one slot, so point k+1 is
  generated only after point k's result arrived and runs right after it:
  latency_k = start(k+1) - evaluated_at(k). This is the whole loop a user waits on: the HPO
  manager wakes on the result, asks the optimizer, stores the point; the agent, which has just
  completed its job, leases the new one and spawns the payload. It is split at the new point's
  ``created_at`` into *steering* (result -> point stored) and *dispatch* (stored -> payload
  running: acquire, the job directory, the process spawn).
- k slots (``--slots``, default also 4): ``nParallelEvaluation`` = k; every result makes room for
  one new point, so the i-th result (in ``evaluated_at`` order) is matched with the (k+i)-th
  payload start (in start order). Matching in order is exact for 1 slot and a fair pairing for k.

The payload sleeps ``--payload-seconds`` (default 0.2 s) after reading the clock, so the loop
is never starved by its own previous step. The agent runs as shipped (default poll interval).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    PhpoAgent,
    PhpoServer,
    busy_cpu_elsewhere,
    fresh_pg_database,
    log,
    machine,
    percentile,
    pg_available,
    print_table,
    run_task,
    save_result,
    workdir,
)

SPACE = {"x": {"type": "float", "low": 0.0, "high": 1.0}}


def payload(seconds: float) -> str:
    return (
        "t=$(date +%s.%N); "
        + (f"sleep {seconds:g}; " if seconds > 0 else "")
        + 'echo "{\\"status\\":0,\\"loss\\":1,\\"metrics\\":{\\"start\\":$t}}" > output.json'
    )


def latencies(points: list, slots: int, seconds: float) -> dict:
    """Refill latencies (ms) from the points of a finished task; see the module docstring.
    ``report`` is the other half of a cycle: payload start + ``seconds`` -> result at the server
    (the agent noticing the exit, reading the output file, the result call)."""
    done = [p for p in points if p.state.value == "evaluated" and p.metrics and "start" in p.metrics]
    report = [(p.evaluated_at.timestamp() - float(p.metrics["start"]) - seconds) * 1000 for p in done]
    evaluated = sorted(p.evaluated_at.timestamp() for p in done)
    starts = sorted(float(p.metrics["start"]) for p in done)
    total: list[float] = []
    steering: list[float] = []
    dispatch: list[float] = []
    if slots == 1:
        by_serial = sorted(done, key=lambda p: p.serial)
        for prev, nxt in itertools.pairwise(by_serial):
            e, c, s = prev.evaluated_at.timestamp(), nxt.created_at.timestamp(), float(nxt.metrics["start"])
            total.append((s - e) * 1000)
            steering.append((c - e) * 1000)
            dispatch.append((s - c) * 1000)
    else:
        for e, s in zip(evaluated, starts[slots:], strict=False):  # the last k results start nothing
            total.append((s - e) * 1000)
    out = {"samples": len(total)}
    for name, xs in (("total", total), ("steering", steering), ("dispatch", dispatch), ("report", report)):
        if xs:
            out[name] = {"p50": percentile(xs, 50), "p99": percentile(xs, 99), "max": max(xs)}
    return out


def measure(slots: int, n: int, seconds: float, database_url: str | None, agent_args: list[str]) -> dict:
    with (
        workdir("refill") as d,
        PhpoServer(d / "server", database_url) as srv,
        PhpoAgent(srv, slots, d / "agent", agent_args),
    ):
        client = srv.client()
        run = run_task(
            client,
            timeout=n * (seconds + 3) / slots + 120,
            poll=0.5,
            fetch_points=True,
            outDS="bench-refill",
            evaluationExec=payload(seconds),
            searchSpace=SPACE,
            optimizer="random",
            optimizerOptions={"seed": 0},
            nParallelEvaluation=slots,
            nPointsPerIteration=slots,
            maxPoints=n,
        )
        client.close()
    res = latencies(run.points, slots, seconds)
    res.update(
        {"slots": slots, "n": n, "evaluated": run.evaluated, "state": run.state, "timed_out": run.timed_out}
    )
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="points per run (default 200)")
    ap.add_argument("--quick", action="store_true", help="n = 50")
    ap.add_argument("--slots", type=int, action="append", help="slot counts (default 1 and 4)")
    ap.add_argument("--payload-seconds", type=float, default=0.2)
    ap.add_argument("--pg", action="store_true", help="also on PostgreSQL")
    ap.add_argument(
        "--agent-arg", action="append", default=[], help="extra agent option (default: as shipped)"
    )
    ap.add_argument("--tag", default="", help="suffix of the results file name (keeps experiments apart)")
    args = ap.parse_args(argv)
    n = 50 if args.quick and args.n == 200 else args.n
    slot_list = args.slots or [1, 4]
    info = machine()
    info["busy_before"] = busy_cpu_elsewhere()
    runs: list[tuple[str, dict]] = []
    for slots in slot_list:
        log(f"refill latency, SQLite, {slots} slot(s), {n} points")
        runs.append(("SQLite", measure(slots, n, args.payload_seconds, None, args.agent_arg)))
    if args.pg:
        why = pg_available()
        if why:
            log(f"PostgreSQL skipped: {why}")
        else:
            for slots in slot_list:
                with fresh_pg_database("phpo_bench_refill") as url:
                    log(f"refill latency, PostgreSQL, {slots} slot(s), {n} points")
                    runs.append(("PostgreSQL", measure(slots, n, args.payload_seconds, url, args.agent_arg)))
    info["busy_after"] = busy_cpu_elsewhere()
    rows = []
    for db, r in runs:
        t, st, dp, rp = (r.get(k, {}) for k in ("total", "steering", "dispatch", "report"))
        rows.append(
            [
                db,
                r["slots"],
                r["samples"],
                t.get("p50"),
                t.get("p99"),
                st.get("p50"),
                dp.get("p50"),
                rp.get("p50"),
                "yes" if t and t["p50"] <= 100 else "no",
            ]
        )
    table = print_table(
        f"Refill latency, ms (result at the server -> next payload running; loadavg {info['loadavg']})",
        [
            "database",
            "slots",
            "samples",
            "p50",
            "p99",
            "steering p50",
            "dispatch p50",
            "payload end -> result p50",
            "p50 <= 100 ms",
        ],
        rows,
    )
    save_result(
        "refill_latency" + args.tag,
        {"machine": info, "runs": [{"database": db, **r} for db, r in runs], "table": table},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
