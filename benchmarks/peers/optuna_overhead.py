"""Optuna half of the overhead benchmark (runs in benchmarks/.peers-venv).

N trials of an objective that sleeps ``--seconds``, run by ``--workers`` threads
(``study.optimize(n_jobs=...)``) on an RDB storage (a SQLite file or PostgreSQL URL), with the
random sampler, like phpo's. Prints one JSON line with the wall time of ``optimize()``.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--storage", required=True, help="sqlite:///file.db or postgresql+psycopg://...")
    args = ap.parse_args()

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seconds = args.seconds

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", 0.0, 1.0)
        time.sleep(seconds)
        return 1.0

    storage = optuna.storages.RDBStorage(
        args.storage,
        engine_kwargs={"pool_size": args.workers + 4} if not args.storage.startswith("sqlite") else {},
    )
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    t0 = time.monotonic()
    study.optimize(objective, n_trials=args.n, n_jobs=args.workers, catch=())
    wall = time.monotonic() - t0
    done = sum(1 for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE)
    print(
        json.dumps(
            {
                "peer": "optuna",
                "version": optuna.__version__,
                "n": args.n,
                "completed": done,
                "wall_s": wall,
                "storage": args.storage.split(":", 1)[0],
            }
        )
    )


if __name__ == "__main__":
    main()
