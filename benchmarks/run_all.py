"""``make bench``: every benchmark of phpo against its peers, one after the other, in one run on
this machine, and one Markdown report of the tables (``benchmarks/results/latest.md``).

    python benchmarks/run_all.py             # full: about 30 minutes on 2 cores
    python benchmarks/run_all.py --quick     # smoke: about 5 minutes
    python benchmarks/run_all.py --only refill_latency --only segments

Each script runs as its own process with its own servers and databases, so one failing does
not stop the others; each has a time bound, and the whole run stops starting new scripts past
``--budget-minutes``. The peers (Ray Tune, Optuna) are installed on first use into
``benchmarks/.peers-venv``, outside the project's environment. ``benchmarks/steering_ask.py``
(the steering benchmark of issue 3) runs too when it exists.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import BENCH, RESULTS, busy_cpu_elsewhere, ensure_peers_venv, log, machine

# name, full arguments, quick arguments, time bound in seconds (full, quick)
PLAN: list[tuple[str, list[str], list[str], tuple[int, int]]] = [
    ("overhead", [], ["--quick"], (1200, 240)),
    ("throughput", ["--m", "600"], ["--quick"], (900, 180)),
    ("refill_latency", [], ["--quick"], (400, 120)),
    ("segments", ["--run-seconds", "240"], ["--quick", "--run-seconds", "60"], (900, 240)),
    ("steering_ask", [], ["--sizes", "100,1000"], (600, 180)),
    ("ui_page_weight", [], ["--no-mlflow"], (300, 180)),
]
RESULT_FILES = {
    "overhead": "overhead",
    "throughput": "throughput",
    "refill_latency": "refill_latency",
    "segments": "segments",
}


def run_streaming(cmd: list[str], timeout: float) -> tuple[int, str]:
    """Run a script, echo its stdout as it comes and keep it; 124 when it ran past ``timeout``
    (its whole process group is then sent SIGTERM)."""
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    expired = threading.Event()

    def stop() -> None:
        expired.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)

    timer = threading.Timer(timeout, stop)
    timer.start()
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line)
        rc = proc.wait()
    finally:
        timer.cancel()
    return (124 if expired.is_set() else rc), "".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (about 5 minutes)")
    ap.add_argument("--only", action="append", choices=[p[0] for p in PLAN], help="run only these")
    ap.add_argument(
        "--budget-minutes",
        type=float,
        default=None,
        help="start no script after this many minutes (default 35, or 7 with --quick)",
    )
    args = ap.parse_args(argv)
    budget = 60 * (args.budget_minutes or (7 if args.quick else 35))
    t0 = time.monotonic()
    info = machine()
    info["busy_before"] = busy_cpu_elsewhere()
    print(f"phpo benchmarks, {'quick' if args.quick else 'full'} run: {info}", flush=True)
    ensure_peers_venv()  # once, before any clock starts

    ran: list[tuple[str, int, float]] = []
    outputs: dict[str, str] = {}
    for name, full, quick, (bound_full, bound_quick) in PLAN:
        if args.only and name not in args.only:
            continue
        script = BENCH / f"{name}.py"
        if not script.exists():
            log(f"{name}: {script.name} not there, skipped")
            continue
        if time.monotonic() - t0 > budget:
            log(f"{name}: skipped, the run's budget of {budget / 60:g} min is spent")
            ran.append((name, -1, 0.0))
            continue
        cmd = [sys.executable, str(script), *(quick if args.quick else full)]
        log(f"{name}: {' '.join(cmd[1:])}")
        start = time.monotonic()
        rc, text = run_streaming(cmd, bound_quick if args.quick else bound_full)
        if rc == 124:
            log(f"{name}: stopped after its bound of {bound_quick if args.quick else bound_full} s")
        outputs[name] = text
        ran.append((name, rc, time.monotonic() - start))

    info["busy_after"] = busy_cpu_elsewhere()
    kind = "quick" if args.quick else "full"
    where = (
        f"Machine: {info['cpus']} CPUs, {info['memory_gb']} GB, Python {info['python']}, "
        f"{info['platform']}; {info['date']}; load average at the start {info['loadavg']}, CPU busy "
        f"with other work {info['busy_before']:.0%} before / {info['busy_after']:.0%} after."
    )
    report = [f"# phpo benchmarks ({kind} run)", "", where, ""]
    for name, rc, secs in ran:
        report.append(f"- {name}: {'skipped (budget)' if rc == -1 else f'exit {rc}, {secs:.0f} s'}")
    report.append("")
    for name, _, _ in ran:
        path = RESULTS / f"{RESULT_FILES.get(name, name)}.json"
        if path.exists() and path.stat().st_mtime >= time.time() - (time.monotonic() - t0) - 5:
            table = json.loads(path.read_text()).get("table")
            if table:
                report += [table, ""]
        elif outputs.get(name, "").strip():  # a script without a results file: its stdout
            report += [f"### {name}", "", "```", outputs[name].strip(), "```", ""]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"latest{'-quick' if args.quick else ''}.md"
    out.write_text("\n".join(report) + "\n")
    print("\n".join(report[: 4 + len(ran)]))
    log(f"all tables: {out} ({(time.monotonic() - t0) / 60:.1f} min)")
    return 0 if all(rc in (0, -1) for _, rc, _ in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
