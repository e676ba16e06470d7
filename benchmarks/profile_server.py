"""Where the server's time goes under load: py-spy samples the phpo server process while a
workload runs, and the collapsed stacks are summed per phpo function (inclusive) and per leaf
function (self), so the hot paths can be named with file and function.

    python benchmarks/profile_server.py --workload http --slots 16 --m 1500
    python benchmarks/profile_server.py --workload segments --segments 300

Workloads: ``http`` (the HTTP-only agent loop of throughput.py on one task), ``segments``
(one task of S segments x 20 points, the same loop), ``agent`` (the overhead benchmark: the real
agent with ``--slots`` slots running ``sleep 1`` payloads). py-spy comes from the peers' venv
(``benchmarks/.peers-venv``; installed there on first use). The raw stacks are kept in
``benchmarks/results/profile-<workload>.txt`` (flamegraph.pl / speedscope read them).
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    PEERS_VENV,
    RESULTS,
    PhpoAgent,
    PhpoServer,
    ensure_peers_venv,
    fresh_pg_database,
    http_agent_loop,
    log,
    run_task,
    workdir,
)

SPACE = {"x": {"type": "float", "low": 0.0, "high": 1.0}}


def py_spy() -> Path:
    py = ensure_peers_venv()
    exe = PEERS_VENV / "bin" / "py-spy"
    if not exe.exists():
        subprocess.run([str(py), "-m", "pip", "install", "-q", "py-spy"], check=True)
    return exe


IDLE_LEAVES = (
    "Condition.wait",
    "EpollSelector.select",
    "_write_to_self",
    "_read_from_self",
    "Event.wait",
    "_worker (concurrent",
    "Thread.join",
    "Queue.get",
    "Lock.acquire",
)
OURS = ("server/", "steering/", "schemas/", "phpo/", "evaluation_container/", "client/")


def summarize(raw: Path, top: int = 30) -> str:
    """Time per function of phpo (inclusive: the function and what it calls) and per leaf frame
    (self), as shares of the samples in which the server was doing something (waits dropped)."""
    inclusive: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    busy = idle = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")]
        if not frames:
            continue
        if any(x in frames[-1] for x in IDLE_LEAVES):
            idle += n
            continue
        busy += n
        leaf[frames[-1]] += n
        seen = set()
        for f in frames:
            name, _, where = f.partition(" (")
            key = f"{name} ({where.rsplit(':', 1)[0]})"
            if key not in seen and any(o in where for o in OURS):
                seen.add(key)
                inclusive[key] += n
    out = [
        f"busy samples: {busy} (idle/waiting samples dropped: {idle})",
        "",
        "phpo functions, inclusive share of busy samples:",
    ]
    out += [f"  {100 * n / busy:5.1f} %  {k}" for k, n in inclusive.most_common(top)]
    out += ["", "leaf frames (self), share of busy samples:"]
    out += [f"  {100 * n / busy:5.1f} %  {k}" for k, n in leaf.most_common(top)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=["http", "segments", "agent"], default="http")
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--m", type=int, default=1500, help="points (http workload)")
    ap.add_argument("--segments", type=int, default=300)
    ap.add_argument("--pg", action="store_true", help="PostgreSQL instead of SQLite")
    ap.add_argument("--seconds", type=float, default=60.0, help="bound of the run")
    ap.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    ap.add_argument("--gil", action="store_true", help="only the thread holding the GIL (Python CPU time)")
    ap.add_argument(
        "--target",
        choices=["server", "agent"],
        default="server",
        help="the process sampled (agent: only with --workload agent)",
    )
    args = ap.parse_args(argv)
    exe = py_spy()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.target == "agent" and args.workload != "agent":
        ap.error("--target agent needs --workload agent")
    raw = RESULTS / f"profile-{args.workload}{'-agentside' if args.target == 'agent' else ''}.txt"

    def go(url: str | None) -> None:
        with workdir("profile") as d, PhpoServer(d / "server", url) as srv:
            client = srv.client()
            stop = threading.Event()
            t = threading.Thread(
                target=http_agent_loop,
                args=(srv.url, srv.agent_token, args.slots, stop, time.monotonic() + args.seconds + 30),
                daemon=True,
            )
            agent = PhpoAgent(srv, args.slots, d / "agent") if args.workload == "agent" else None
            assert srv.proc is not None

            def spy_on(pid: int) -> subprocess.Popen:
                return subprocess.Popen(
                    [
                        str(exe),
                        "record",
                        "-p",
                        str(pid),
                        "-r",
                        str(args.rate),
                        "-f",
                        "raw",
                        "-o",
                        str(raw),
                        "--nonblocking",
                        *(["--gil"] if args.gil else []),
                        "-d",
                        str(int(args.seconds)),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )

            spy = spy_on(srv.proc.pid) if args.target == "server" else None
            time.sleep(1.0)
            if agent is not None:
                agent.start()
                if spy is None:
                    assert agent.proc is not None
                    spy = spy_on(agent.proc.pid)
                    time.sleep(1.0)
            else:
                t.start()
            assert spy is not None
            if args.workload == "http":
                spec = {
                    "maxPoints": args.m,
                    "nParallelEvaluation": 2 * args.slots,
                    "nPointsPerIteration": 2 * args.slots,
                }
            elif args.workload == "agent":
                spec = {
                    "maxPoints": args.m,
                    "nParallelEvaluation": args.slots,
                    "nPointsPerIteration": args.slots,
                    "evaluationExec": 'sleep 1; echo \'{"status":0,"loss":1}\' > output.json',
                }
            else:
                spec = {
                    "maxPoints": 20,
                    "nParallelEvaluation": 2,
                    "nPointsPerIteration": 2,
                    "segments": [{"name": f"s{i}"} for i in range(args.segments)],
                }
            spec.setdefault("evaluationExec", "true")
            run = run_task(
                client,
                args.seconds,
                poll=0.5,
                outDS="bench-profile",
                searchSpace=SPACE,
                optimizer="random",
                **spec,
            )
            stop.set()
            if agent is not None:
                agent.stop()
            else:
                t.join(60)
            spy.send_signal(2)  # SIGINT: py-spy writes what it has
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
            log(f"task {run.state}: {run.evaluated} evaluated in {run.wall_s:.1f} s")
            client.close()

    if args.pg:
        with fresh_pg_database("phpo_bench_profile") as url:
            go(url)
    else:
        go(None)
    if not raw.exists():
        print("py-spy wrote no profile (ptrace not permitted here?)", file=sys.stderr)
        return 1
    summary = summarize(raw)
    (raw.with_suffix(".summary.txt")).write_text(summary + "\n")
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
