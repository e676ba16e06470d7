"""Where a payload's own MLflow calls go, and how they reach the point's run.

A payload logs with MLflow into a file store in its working directory (``./mlruns``, the
layout upstream payloads tar as ``evaluationMetrics``), never straight to the tracking server:
so a tracking server that is slow to start, down for a while or unreachable from the site
can neither lose what the payload logs nor make its calls fail, and nothing phpo logged
already (params, tags) can clash with what the payload logs. After the payload ends the agent
ships that store (unless the payload's own ``evaluationMetrics`` tarball holds it already) as
a metrics artifact, and the server's MLflow bridge imports it into the point's run.

MLflow 3.7 and later default to ``sqlite:///mlflow.db`` and refuse a file store unless
``MLFLOW_ALLOW_FILE_STORE`` is set, so an upstream payload (``mlflow.start_run()``, then
``tar cvfz metrics.tgz mlruns/*``) would ship an empty tarball: the two variables below keep
it working as it does with the MLflow it was written for. No MLflow import here: the agent
does not need MLflow installed.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath

from phpo.schemas.payload import ENV_MLFLOW_RUN_ID

from .checkpoints import add_beneath

MLRUNS = "mlruns"


def payload_env(seen_workdir: str, server_has_mlflow: bool, run_id: str | None) -> dict[str, str]:
    """The MLflow part of a payload's environment. ``seen_workdir``: the working directory as
    the payload sees it (inside a container: the mount point). Without an MLflow server on the
    phpo side, a tracking URI the agent's own environment sets is left alone."""
    env: dict[str, str] = {}
    if server_has_mlflow or not os.environ.get("MLFLOW_TRACKING_URI"):
        env["MLFLOW_TRACKING_URI"] = f"file://{seen_workdir.rstrip('/')}/{MLRUNS}"
        env["MLFLOW_ALLOW_FILE_STORE"] = "true"
    if run_id:
        env[ENV_MLFLOW_RUN_ID] = run_id  # the point's run on the tracking server (for links)
    return env


def clear(rundir: Path) -> None:
    """A fresh store for the next point of a job (they share the directory); a sandbox's stale
    ``mlruns/`` (panda-client ships its ``*.yaml`` files too) goes as well."""
    shutil.rmtree(rundir / MLRUNS, ignore_errors=True)


def has_runs(rundir: Path) -> bool:
    root = rundir / MLRUNS
    return root.is_dir() and any(root.glob("*/*/meta.yaml"))


def ships_mlruns(path: Path) -> bool:
    """Whether ``path`` (the payload's ``evaluationMetrics`` file) is a tarball with ``mlruns/`` in it."""
    try:
        if not path.is_file() or not tarfile.is_tarfile(path):
            return False
        with tarfile.open(path, "r:*") as t:
            return any(MLRUNS in PurePosixPath(m.name).parts for m in t)
    except (OSError, tarfile.TarError):
        return False


def pack(rundir: Path, metrics_file: str | None, out: Path) -> Path | None:
    """``rundir/mlruns`` as a tarball at ``out``, when it holds a run and the payload's own
    metrics tarball does not carry it already (upstream payloads tar it themselves); else None."""
    if not has_runs(rundir):
        return None
    if metrics_file and ships_mlruns(rundir / metrics_file):
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz") as t:
        add_beneath(
            t, rundir, MLRUNS
        )  # no link followed: the agent may read with more rights than the payload
    return out
