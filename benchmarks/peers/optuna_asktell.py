"""Optuna half of the throughput benchmark (runs in benchmarks/.peers-venv).

``--n`` ask/tell cycles with the random sampler and an instant objective, by ``--workers``
threads sharing one study on an RDB storage: the bookkeeping Optuna does per evaluation
against a database, to set beside phpo's evaluations/s. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import threading
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--storage", required=True)
    ap.add_argument("--seconds", type=float, default=150.0, help="bound of the run")
    args = ap.parse_args()

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kwargs = {} if args.storage.startswith("sqlite") else {"pool_size": args.workers + 4, "max_overflow": 8}
    storage = optuna.storages.RDBStorage(args.storage, engine_kwargs=kwargs)
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    left = [args.n]
    lock = threading.Lock()
    errors: list[str] = []
    deadline = time.monotonic() + args.seconds

    def worker() -> None:
        while time.monotonic() < deadline:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            try:
                trial = study.ask()
                trial.suggest_float("x", 0.0, 1.0)
                study.tell(trial, 0.0)
            except Exception as e:  # noqa: BLE001
                errors.append(f"{type(e).__name__}: {e}")
                return

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(args.workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    done = sum(1 for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE)
    print(
        json.dumps(
            {
                "peer": "optuna",
                "version": optuna.__version__,
                "n": args.n,
                "evaluated": done,
                "wall_s": wall,
                "rate": done / wall if wall > 0 else None,
                "errors": len(errors),
                "first_error": errors[0] if errors else None,
            }
        )
    )


if __name__ == "__main__":
    main()
