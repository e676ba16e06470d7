"""Latency of asking 4 points with 100, 1,000 and 10,000 evaluated points in history (issue 3).

Compares phpo's steering path (the plugin the HPO manager keeps warm in memory: restored once
from the history, then told each result once) with Optuna used directly in-process on the same
sampler and the same history. The two are measured in alternation, so drift on a busy machine
hits both alike. Goal: ratio <= 1.2 at 10,000.

    python benchmarks/steering_ask.py [--optimizer optuna.tpe] [--sizes 100,1000,10000]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import create_trial
from phpo.schemas.search_space import parse_search_space
from phpo.steering.base import HistoryItem, OptimizerConfig
from phpo.steering.optuna_backend import make_sampler
from phpo.steering.registry import create_optimizer

SPACE = {
    "x": {"type": "float", "low": -5.0, "high": 5.0},
    "lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
    "layers": {"type": "int", "low": 1, "high": 8},
    "act": {"type": "categorical", "choices": ["relu", "tanh", "gelu"]},
}
# the same space written directly for Optuna (for its history; asks use suggest_*)
DISTS = {
    "x": FloatDistribution(-5.0, 5.0),
    "lr": FloatDistribution(1e-5, 1e-1, log=True),
    "layers": IntDistribution(1, 8),
    "act": CategoricalDistribution(["relu", "tanh", "gelu"]),
}


def loss(p: dict[str, Any]) -> float:
    return (p["x"] - 1) ** 2 + (math.log10(p["lr"]) + 3) ** 2 + abs(p["layers"] - 3) + (p["act"] != "gelu")


def history(n: int, seed: int = 0) -> list[dict[str, Any]]:
    r = random.Random(seed)
    return [
        {
            "x": r.uniform(-5, 5),
            "lr": 10 ** r.uniform(-5, -1),
            "layers": r.randint(1, 8),
            "act": r.choice(["relu", "tanh", "gelu"]),
        }
        for _ in range(n)
    ]


def bench(optimizer: str, n: int, reps: int) -> tuple[float, float, float]:
    kind = optimizer.split(".", 1)[1]
    points = history(n)

    # phpo: restore once (what a server start costs), then ask/tell as the manager does
    t0 = time.perf_counter()
    plugin = create_optimizer(optimizer, OptimizerConfig(space=parse_search_space(SPACE), seed=0))
    plugin.restore([HistoryItem(p, loss(p)) for p in points])
    restore_s = time.perf_counter() - t0

    # Optuna directly: the same sampler and history
    study = optuna.create_study(sampler=make_sampler(kind, 0, {}))
    study.add_trials([create_trial(params=p, distributions=DISTS, value=loss(p)) for p in points])

    def phpo_round() -> float:
        t = time.perf_counter()
        batch = plugin.ask(4)
        dt = time.perf_counter() - t
        for p in batch:
            plugin.tell(p, loss(p))
        return dt

    def optuna_round() -> float:
        t = time.perf_counter()
        trials = []
        for _ in range(4):
            trial = study.ask()
            params = {
                "x": trial.suggest_float("x", -5.0, 5.0),
                "lr": trial.suggest_float("lr", 1e-5, 1e-1, log=True),
                "layers": trial.suggest_int("layers", 1, 8),
                "act": trial.suggest_categorical("act", ["relu", "tanh", "gelu"]),
            }
            trials.append((trial, params))
        dt = time.perf_counter() - t
        for trial, params in trials:
            study.tell(trial, loss(params))
        return dt

    phpo_round(), optuna_round()  # warm-up
    ours, theirs = [], []
    for _ in range(reps):
        ours.append(phpo_round())
        theirs.append(optuna_round())
    return statistics.median(ours), statistics.median(theirs), restore_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--optimizer", default="optuna.tpe", help="an optuna.* plugin name")
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--reps", type=int, default=0, help="rounds per size (default: by size)")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    print(f"ask(4) latency, {args.optimizer}, median of alternating rounds")
    print(
        f"{'history':>8} | {'phpo ask(4)':>12} | {'optuna ask(4)':>13} | {'ratio':>5} | {'phpo restore':>12}"
    )
    print(f"{'-' * 8}-+-{'-' * 12}-+-{'-' * 13}-+-{'-' * 5}-+-{'-' * 12}")
    for n in (int(s) for s in args.sizes.split(",")):
        reps = args.reps or (30 if n <= 100 else 15 if n <= 1000 else 7)
        ours, theirs, restore_s = bench(args.optimizer, n, reps)
        print(
            f"{n:>8,} | {ours * 1e3:>9.1f} ms | {theirs * 1e3:>10.1f} ms | {ours / theirs:>5.2f} | {restore_s * 1e3:>9.0f} ms"
        )


if __name__ == "__main__":
    main()
