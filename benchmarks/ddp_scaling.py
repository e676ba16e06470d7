"""Scaling of a PyTorch DDP payload's epoch time with the number of processes (issue 21).

    python benchmarks/ddp_scaling.py                  # 1, 2 and 4 processes, gloo on the CPU
    python benchmarks/ddp_scaling.py --procs 1,2 --epochs 4 --hidden 512

Runs ``examples/distributed/ddp_train.py`` under ``torchrun --standalone`` (rendezvous on
loopback) outside any agent, on the same point and the same global batch for every process
count, and prints the median epoch time (the first epoch left out: it warms up), the speed-up
against one process and the parallel efficiency. On a 2-core machine 4 processes oversubscribe
the cores: the row says so rather than hiding it. Each rank gets one thread (OMP_NUM_THREADS=1,
torchrun's default), so one process is a fair single-core baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import BENCH, busy_cpu_elsewhere, fmt, machine, print_table, save_result, workdir

PAYLOAD = BENCH.parent / "examples" / "distributed" / "ddp_train.py"


def run(n: int, args: argparse.Namespace) -> dict:
    with workdir(f"ddp{n}-") as d:
        point = {"lr": 0.05, "hidden": args.hidden, "epochs": args.epochs, "batch_size": args.batch}
        (d / "input.json").write_text(json.dumps(point))
        times = d / "times.json"
        env = {**os.environ, "PHPO_DDP_TIMES": str(times), "OMP_NUM_THREADS": "1"}
        torchrun = Path(sys.executable).with_name("torchrun")
        t0 = time.perf_counter()
        proc = subprocess.run(
            [str(torchrun), "--standalone", f"--nproc-per-node={n}", str(PAYLOAD)],
            cwd=d,
            env=env,
            capture_output=True,
            text=True,
            timeout=args.timeout,
        )
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(
                f"torchrun with {n} processes failed ({proc.returncode}):\n{proc.stderr[-2000:]}"
            )
        epoch_s = json.loads(times.read_text())["epoch_seconds"]
        loss = json.loads((d / "output.json").read_text())["loss"]
    steady = epoch_s[1:] or epoch_s
    return {"procs": n, "epoch_s": statistics.median(steady), "wall_s": wall, "loss": loss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--procs", default="1,2,4")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=1024, help="hidden units (compute per batch)")
    ap.add_argument("--batch", type=int, default=64, help="global batch, split over the processes")
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()
    busy = busy_cpu_elsewhere()
    rows = [run(int(n), args) for n in args.procs.split(",")]
    base = rows[0]["epoch_s"] * rows[0]["procs"]
    cores = os.cpu_count() or 1
    table = []
    for r in rows:
        speed = base / r["epoch_s"]
        note = "more processes than cores" if r["procs"] > cores else ""
        table.append(
            [
                r["procs"],
                fmt(r["epoch_s"]),
                fmt(speed, 2),
                fmt(speed / r["procs"], 2),
                fmt(r["wall_s"], 1),
                fmt(r["loss"]),
                note,
            ]
        )
    print_table(
        f"DDP epoch time, gloo on {cores} CPU cores (other load at start: {busy:.0%})",
        ["processes", "epoch s (median)", "speed-up", "efficiency", "wall s", "val loss", ""],
        table,
    )
    save_result(
        "ddp_scaling", {"machine": machine(), "busy_elsewhere": busy, "rows": rows, "args": vars(args)}
    )


if __name__ == "__main__":
    main()
