"""A Dask payload: one phpo point whose work is spread over a Dask cluster.

Run by ``--launcher dask --nProcessesPerPoint N``: the agent starts a cluster of N worker
processes on loopback for the point and sets ``DASK_SCHEDULER_ADDRESS``, so ``Client()`` below
connects to it with no address in the code. The point is scored by k-fold cross-validation of a
scikit-learn classifier on the digits data (it ships with scikit-learn): each fold is fitted as
a Dask task on a worker, the scores come back to this process, which reports the mean log loss.
Without the launcher (``DASK_SCHEDULER_ADDRESS`` unset) ``Client()`` starts a local cluster of
its own, so the script also runs by hand.

Hyperparameters (the point): ``n_estimators``, ``max_depth``, ``folds``.
"""

from __future__ import annotations

import os

from distributed import Client
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold

from phpo.evaluation_container import sdk


def fit_fold(fold: int, folds: int, n_estimators: int, max_depth: int) -> tuple[float, str]:
    """Fit one fold on a worker; its validation log loss and the worker that ran it."""
    from distributed import get_worker

    x, y = load_digits(return_X_y=True)
    train, val = list(StratifiedKFold(folds, shuffle=True, random_state=0).split(x, y))[fold]
    model = RandomForestClassifier(n_estimators=n_estimators, max_depth=max_depth, random_state=fold)
    model.fit(x[train], y[train])
    return float(log_loss(y[val], model.predict_proba(x[val]), labels=list(range(10)))), get_worker().address


def main() -> None:
    params = sdk.load_point()
    folds = int(params.get("folds", 4))
    n_estimators = int(params.get("n_estimators", 50))
    max_depth = int(params.get("max_depth", 8))
    with Client() as client:  # DASK_SCHEDULER_ADDRESS, set by the agent's launcher
        workers = list(client.scheduler_info()["workers"])
        futures = client.map(
            fit_fold, range(folds), folds=folds, n_estimators=n_estimators, max_depth=max_depth, pure=False
        )
        results = client.gather(futures)
    losses = [loss for loss, _ in results]
    used = sorted({addr for _, addr in results})
    loss = sum(losses) / len(losses)
    sdk.report(
        loss,
        metrics={
            "n_workers": len(workers),
            "workers_used": len(used),
            "workers": sorted(workers),
            "scheduler": os.environ.get("DASK_SCHEDULER_ADDRESS", "local"),
            "fold_losses": losses,
        },
    )


if __name__ == "__main__":
    main()
