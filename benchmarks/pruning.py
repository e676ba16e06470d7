"""Pruning on real learning curves: epochs run (the GPU-time proxy) and best loss for
``none`` vs ``median`` vs ``asha``, the same point budget and sampler seeds, several seeds; the
server's decider (phpo.server.services.pruning, over a real SQLite database) fed the same
reports as an in-process Optuna study, to show the decisions are Optuna's; and what one
intermediate report adds on the server (the decider's query and ``prune`` call).

Workload: scikit-learn's SGDClassifier trained epoch by epoch (``partial_fit``) on the digits
data that ships with scikit-learn; the loss is the validation error (1 - accuracy) after each
epoch. The sampler is Optuna's TPE with the run's seed; every run evaluates the same number of
points.

    .venv/bin/python benchmarks/pruning.py [--points 30] [--epochs 25] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
from sklearn.datasets import load_digits
from sklearn.linear_model import SGDClassifier
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore")

PRUNERS = {
    "none": ("none", {}),
    "median": ("median", {"n_startup_trials": 5, "n_warmup_steps": 2}),
    "asha": ("asha", {"min_resource": 1, "reduction_factor": 3}),
}


def data():
    x, y = load_digits(return_X_y=True)
    xtr, xva, ytr, yva = train_test_split(x, y, test_size=0.3, random_state=0)
    sc = StandardScaler().fit(xtr)
    return sc.transform(xtr), sc.transform(xva), ytr, yva


def objective_factory(epochs: int, seed: int, log: list):
    xtr, xva, ytr, yva = data()
    classes = np.unique(ytr)

    def objective(trial: optuna.Trial) -> float:
        clf = SGDClassifier(
            loss="hinge",
            alpha=trial.suggest_float("alpha", 1e-7, 1e-0, log=True),
            learning_rate="constant",
            eta0=trial.suggest_float("eta0", 1e-5, 1e-0, log=True),
            random_state=seed,
        )
        err = 1.0
        for epoch in range(epochs):
            clf.partial_fit(xtr, ytr, classes=classes)
            err = 1.0 - clf.score(xva, yva)
            log.append((trial.number, epoch, err))
            trial.report(err, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return err

    return objective


def run_optuna(pruner: str, points: int, epochs: int, seed: int):
    from phpo.steering.pruners import make_pruner

    name, opts = PRUNERS[pruner]
    log: list = []
    study = optuna.create_study(
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=make_pruner(name, opts) or optuna.pruners.NopPruner(),
        study_name="task1-segment0",
    )
    study.optimize(objective_factory(epochs, seed, log), n_trials=points)
    pruned = [(t.number, t.last_step) for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    return len(log), study.best_value, log, pruned


def replay_on_server(pruner: str, log: list, epochs: int, db_path: Path):
    """The server's decider over a real SQLite database, fed the same reports in the same order
    (points stored as the broker stores them); returns its decisions and the time per report."""
    from phpo.schemas.tasks import TaskSpec
    from phpo.server.db.engine import Database, utcnow
    from phpo.server.db.tables import PointRow, SegmentRow, TaskRow
    from phpo.server.orchestration.transitions import set_state
    from phpo.server.services.pruning import PruningDecider

    name, opts = PRUNERS[pruner]
    spec = TaskSpec(
        evaluationExec="true",
        optimizer="random",
        searchSpace={"params": {"a": {"type": "float", "low": 0.0, "high": 1.0}}},
        pruner=name,
        prunerOptions=opts,
        maxPoints=1000,
    )
    db = Database(f"sqlite:///{db_path}")
    db.migrate()
    now = utcnow()
    with db.write() as s:
        task = TaskRow(
            name="bench",
            owner="bench",
            state="running",
            spec=spec.model_dump(mode="json"),
            optimizer="random",
            n_segments=1,
            failed_iterations=0,
            created_at=now,
            updated_at=now,
        )
        s.add(task)
        s.flush()
        s.add(
            SegmentRow(
                task_id=task.id,
                idx=0,
                name="",
                files=[],
                finished=False,
                n_generated=0,
                n_jobs=0,
                created_at=now,
            )
        )
        tid = task.id
    decider = PruningDecider()
    ids: dict[int, int] = {}
    decisions, times, write = [], [], []
    for n, epoch, err in log:
        with db.write() as s:
            if n not in ids:
                p = PointRow(
                    task_id=tid,
                    segment_idx=0,
                    serial=n,
                    params={"a": 0},
                    state="leased",
                    attempts=0,
                    intermediate=[],
                    created_at=utcnow(),
                    updated_at=utcnow(),
                )
                s.add(p)
                s.flush()
                ids[n] = p.id
            p = s.get(PointRow, ids[n])
            p.intermediate = [*(p.intermediate or []), {"step": epoch, "value": err}]
            p.updated_at = utcnow()
            t0 = time.perf_counter()
            s.flush()  # the heartbeat's own write of the value (there with or without a pruner)
            t1 = time.perf_counter()
            write.append(t1 - t0)
            t0 = t1
            got = decider.decide(s, tid, 0, spec, {p.id})
            times.append(time.perf_counter() - t0)
            if got:
                decisions.append((n, epoch))
                set_state(p, "pruned", message="bench")
            elif epoch == epochs - 1:  # its result, as the broker records it
                set_state(p, "evaluated")
                p.loss, p.loss_value = err, err
    db.engine.dispose()
    return decisions, times, write


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a = ap.parse_args()
    rows = {}
    match = {}
    cost: list[float] = []
    writes: list[float] = []  # the peer: writing the value itself (the heartbeat without a pruner)
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for pruner in PRUNERS:
            for seed in a.seeds:
                n_epochs, best, log, pruned = run_optuna(pruner, a.points, a.epochs, seed)
                rows.setdefault(pruner, []).append((n_epochs, best))
                if pruner != "none":
                    decisions, times, write = replay_on_server(
                        pruner, log, a.epochs, Path(tmp) / f"{pruner}-{seed}.db"
                    )
                    match[(pruner, seed)] = (decisions == pruned, len(pruned))
                    cost += times
                    writes += write
    none_epochs = statistics.mean(e for e, _ in rows["none"])
    print(f"SGDClassifier on digits, {a.points} points x {a.epochs} epochs, TPE seeds {a.seeds}")
    print(
        "| pruner | epochs run (mean) | vs none | best val error (mean ± sd over seeds) | "
        "decisions = in-process Optuna |"
    )
    print("| --- | --- | --- | --- | --- |")
    for pruner, rs in rows.items():
        ep = statistics.mean(e for e, _ in rs)
        bests = [b for _, b in rs]
        sd = statistics.stdev(bests) if len(bests) > 1 else 0.0
        m = [match[(pruner, s)] for s in a.seeds] if pruner != "none" else []
        same = (
            "-"
            if not m
            else f"{sum(ok for ok, _ in m)}/{len(m)} seeds identical ({sum(k for _, k in m)} pruned)"
        )
        print(
            f"| {pruner} | {ep:.0f} | {none_epochs / ep:.2f}x fewer | {statistics.mean(bests):.4f} ± {sd:.4f} "
            f"| {same} |"
        )
    cost.sort()
    print(
        f"\nserver decider per intermediate report (query + prune, SQLite): "
        f"median {statistics.median(cost) * 1e3:.3f} ms, p99 {cost[int(len(cost) * 0.99)] * 1e3:.3f} ms "
        f"over {len(cost)} reports; the heartbeat's own write of the value: median "
        f"{statistics.median(writes) * 1e3:.3f} ms (ratio {statistics.median(cost) / statistics.median(writes):.2f})"
    )
    print(f"(wall {time.monotonic() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
