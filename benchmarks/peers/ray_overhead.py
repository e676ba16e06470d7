"""Ray Tune half of the overhead benchmark (runs in benchmarks/.peers-venv).

N trials of a function trainable that sleeps ``--seconds``, ``--concurrency`` at a time, each
asking for ``--cpu`` CPUs so that all of them fit on this machine's cores at once. Prints one
JSON line: the wall time of ``Tuner.fit()`` (Ray's start-up is timed apart, as phpo's is).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--cpu", type=float, default=0.1)
    args = ap.parse_args()

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    import ray
    from ray import tune

    seconds = args.seconds

    def trainable(config: dict) -> dict:
        time.sleep(seconds)
        return {"loss": 1.0}

    t0 = time.monotonic()
    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        logging_level="ERROR",
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
    )  # loopback only: no traffic on any other interface
    startup = time.monotonic() - t0
    with tempfile.TemporaryDirectory(prefix="ray-bench-") as storage:
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": args.cpu}),
            param_space={"x": tune.uniform(0.0, 1.0)},
            tune_config=tune.TuneConfig(
                num_samples=args.n,
                max_concurrent_trials=args.concurrency,
                metric="loss",
                mode="min",
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(storage_path=storage, name="bench", verbose=0),
        )
        t1 = time.monotonic()
        results = tuner.fit()
        wall = time.monotonic() - t1
        done = sum(1 for r in results if r.error is None and r.metrics and "loss" in r.metrics)
    ray.shutdown()
    print(
        json.dumps(
            {
                "peer": "ray",
                "version": ray.__version__,
                "n": args.n,
                "completed": done,
                "wall_s": wall,
                "startup_s": startup,
            }
        )
    )


if __name__ == "__main__":
    main()
