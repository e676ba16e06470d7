"""Bookkeeping overhead: the Ray Tune scalability benchmark, scaled to this machine (issue 9 §1).

N trials of a 1-second payload, 16 at a time; overhead = wall / (N × 1 s / 16) − 1, so 0 is a
perfect scheduler and 0.02 means 2 % of the time went to bookkeeping. The same workload runs

- through phpo: one server (SQLite, or PostgreSQL with ``--pg``) and one agent with
  ``--slots 16`` running the shell payload ``sleep 1; echo '{"status":0,"loss":1}' > output.json``,
  the ``random`` optimizer (steering is not what is measured), ``nParallelEvaluation`` 16 and
  ``nPointsPerIteration`` 16; wall = the task's ``created_at`` -> ``finished_at`` as the server
  stamps them (submit to the last result; server start-up is not counted);
- through Ray Tune: a function trainable sleeping 1 s, ``max_concurrent_trials=16``, each trial
  asking for 0.1 CPU so 16 fit on 2 cores; wall = ``Tuner.fit()`` (``ray.init`` not counted);
- as a floor: 16 threads running the same shell payload back to back with nothing else (no
  server, no database, no HTTP): what forking ``bash`` and ``sleep`` costs on this machine, under
  every system that runs a shell payload (``--no-floor`` skips it);
- through Optuna: 16 worker threads (``study.optimize(n_jobs=16)``), an objective sleeping 1 s,
  the random sampler, on an RDB storage: a SQLite file, and a fresh PostgreSQL database when
  127.0.0.1:5432 answers; wall = ``optimize()``.

The peers run in ``benchmarks/.peers-venv`` (created on first use). Ray Tune needs about a
second of this 2-core machine per trial, so by default it runs ``min(N, 128)`` trials (32 with --quick)
(``--ray-n``); the overhead is a per-trial ratio, so the figures compare, and the table says N.

    python benchmarks/overhead.py            # N = 2000
    python benchmarks/overhead.py --quick    # N = 160, for a smoke run
"""

from __future__ import annotations

import argparse
import subprocess
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

SLOTS = 16
PAYLOAD = 'sleep 1; echo \'{"status":0,"loss":1}\' > output.json'
SPACE = {"x": {"type": "float", "low": 0.0, "high": 1.0}}


def overhead(wall: float, n: int, seconds: float = 1.0, slots: int = SLOTS) -> float:
    return wall / (n * seconds / slots) - 1.0


def run_phpo(
    n: int, database_url: str | None, agent_args: list[str], timeout: float, parallel: int = SLOTS
) -> dict:
    with (
        workdir("overhead") as d,
        PhpoServer(d / "server", database_url) as srv,
        PhpoAgent(srv, SLOTS, d / "agent", agent_args) as agent,
    ):
        client = srv.client()
        cpu0, acpu0 = srv.cpu_seconds(), agent.cpu_seconds()
        run = run_task(
            client,
            timeout,
            outDS="bench-overhead",
            evaluationExec=PAYLOAD,
            searchSpace=SPACE,
            optimizer="random",
            optimizerOptions={"seed": 0},
            nParallelEvaluation=parallel,
            nPointsPerIteration=parallel,
            maxPoints=n,
        )
        server_cpu, agent_cpu = srv.cpu_seconds() - cpu0, agent.cpu_seconds() - acpu0
        client.close()
    out = {
        "n": n,
        "completed": run.evaluated,
        "failed": run.failed,
        "wall_s": run.wall_s,
        "state": run.state,
        "timed_out": run.timed_out,
        "server_cpu_s": server_cpu,
        "agent_cpu_s": agent_cpu,
    }
    if run.evaluated:
        out["overhead"] = overhead(run.wall_s, run.evaluated)
    return out


def run_floor(n: int, slots: int = SLOTS) -> dict:
    """The payload alone: ``slots`` threads run it back to back, each in its own directory."""
    left = [n]
    lock = threading.Lock()
    errors: list[str] = []

    def worker(cwd: Path) -> None:
        cwd.mkdir()
        while True:
            with lock:
                if left[0] <= 0 or errors:
                    return
                left[0] -= 1
            r = subprocess.run(["bash", "-c", PAYLOAD], cwd=cwd, capture_output=True, text=True)
            if r.returncode != 0:
                errors.append(r.stderr[-300:] or f"exit {r.returncode}")

    with workdir("floor") as d:
        threads = [threading.Thread(target=worker, args=(d / f"slot{i}",)) for i in range(slots)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
    if errors:
        return {"error": f"the payload failed: {errors[0]}"}
    return with_overhead({"n": n, "completed": n, "failed": 0, "wall_s": wall})


def with_overhead(res: dict) -> dict:
    if "error" not in res and res.get("completed"):
        res["overhead"] = overhead(res["wall_s"], res["completed"])
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="trials (default 2000)")
    ap.add_argument("--ray-n", type=int, default=None, help="Ray Tune's trials (default min(N, 128))")
    ap.add_argument("--quick", action="store_true", help="N = 160 (smoke run)")
    ap.add_argument("--no-peers", action="store_true", help="phpo only (and the floor)")
    ap.add_argument("--no-floor", action="store_true", help="skip the bare shell loop")
    ap.add_argument("--pg", action="store_true", help="also run phpo on PostgreSQL")
    ap.add_argument(
        "--parallel",
        type=int,
        default=SLOTS,
        help="phpo's nParallelEvaluation (default 16 = the slots; more keeps ready points waiting)",
    )
    ap.add_argument(
        "--agent-arg",
        action="append",
        default=[],
        help="extra agent option, e.g. --agent-arg=--poll-interval=0.2 (default: as shipped)",
    )
    ap.add_argument("--tag", default="", help="suffix of the results file name (keeps experiments apart)")
    args = ap.parse_args(argv)
    n = 160 if args.quick and args.n == 2000 else args.n
    ray_n = args.ray_n or min(n, 32 if args.quick else 128)

    def bound(k: int) -> float:
        """Each run is bounded: twice the ideal time plus a margin."""
        return 2 * k / SLOTS + 120

    info = machine()
    info["busy_before"] = busy_cpu_elsewhere()
    pg = pg_available()
    results: dict[str, dict] = {}

    log(f"phpo on SQLite: {n} trials x 1 s, {SLOTS} slots")
    results["phpo (SQLite)"] = run_phpo(n, None, args.agent_arg, bound(n), args.parallel)
    if args.pg and not pg:
        with fresh_pg_database("phpo_bench_overhead") as url:
            log(f"phpo on PostgreSQL: {n} trials")
            results["phpo (PostgreSQL)"] = run_phpo(n, url, args.agent_arg, bound(n), args.parallel)
    if not args.no_floor:
        log(f"floor: {n} x the shell payload, {SLOTS} threads, no bookkeeping")
        results["bare shell loop (floor)"] = run_floor(n)
    if not args.no_peers:
        log(f"Ray Tune: {ray_n} trials")
        results["Ray Tune"] = with_overhead(
            run_peer(
                "ray_overhead.py", ["--n", str(ray_n), "--concurrency", str(SLOTS)], timeout=bound(ray_n) * 6
            )
        )
        with workdir("optuna") as d:
            log(f"Optuna (SQLite): {n} trials")
            results["Optuna (SQLite)"] = with_overhead(
                run_peer(
                    "optuna_overhead.py",
                    ["--n", str(n), "--workers", str(SLOTS), "--storage", f"sqlite:///{d / 'optuna.db'}"],
                    timeout=bound(n) * 3,
                )
            )
        if not pg:
            with fresh_pg_database("phpo_bench_optuna") as url:
                log(f"Optuna (PostgreSQL): {n} trials")
                results["Optuna (PostgreSQL)"] = with_overhead(
                    run_peer(
                        "optuna_overhead.py",
                        [
                            "--n",
                            str(n),
                            "--workers",
                            str(SLOTS),
                            "--storage",
                            url.replace("postgresql://", "postgresql+psycopg://"),
                        ],
                        timeout=bound(n) * 3,
                    )
                )
        else:
            results["Optuna (PostgreSQL)"] = {"error": f"PostgreSQL not reachable: {pg}"}
    info["busy_after"] = busy_cpu_elsewhere()

    phpo = results["phpo (SQLite)"].get("overhead")
    rows = []
    for name, r in results.items():
        if "error" in r:
            rows.append([name, "-", "-", "-", "-", r["error"][:100]])
            continue
        ov = r.get("overhead")
        vs = None if name.startswith("phpo") else ratio(ov, phpo)
        rows.append(
            [
                name,
                r.get("completed"),
                r["wall_s"],
                n_ideal(r),
                f"{ov * 100:.1f} %" if ov is not None else "-",
                f"{vs:.1f}x phpo's" if vs is not None else "",
            ]
        )
    table = print_table(
        f"Bookkeeping overhead: N trials x 1 s, {SLOTS} concurrent (loadavg {info['loadavg']})",
        ["system", "trials", "wall s", "ideal s", "overhead", "peer / phpo"],
        rows,
    )
    floor = results.get("bare shell loop (floor)", {}).get("overhead")
    if phpo is not None and floor is not None:
        print(
            f"phpo's bookkeeping above the floor of the shell payload itself: {(phpo - floor) * 100:.1f} points "
            f"({phpo * 100:.1f} % - {floor * 100:.1f} %)"
        )
    tag = f"-parallel{args.parallel}" if args.parallel != SLOTS else ""
    save_result(
        "overhead" + args.tag + tag,
        {"machine": info, "n": n, "ray_n": ray_n, "results": results, "table": table},
    )
    return 0


def n_ideal(r: dict) -> float | None:
    return r["completed"] / SLOTS if r.get("completed") else None


if __name__ == "__main__":
    sys.exit(main())
