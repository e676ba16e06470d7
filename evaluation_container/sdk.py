"""The payload SDK: what a Python training script imports to talk to the phpo agent.

Everything goes through files in the job's working directory, whose names the agent passes in
``PHPO_*`` environment variables; a payload in any other language reads and writes the same
files (docs/payloads.md) and needs none of this. Without the agent (a local test run) the upstream
default names apply: ``input.json``, ``input_ds.json``, ``output.json`` in the current directory.

    from phpo.evaluation_container import sdk
    params = sdk.load_point()
    for epoch in range(start, n):
        ...
        if not sdk.report_intermediate(epoch, val_loss):
            break                       # the server asked to stop this point early
    sdk.report(val_loss, metrics={"acc": acc})

With MLflow on the server, the values given to :func:`report_intermediate` become the metric
``intermediate`` of the point's MLflow run (one entry per step), and whatever the payload logs
with MLflow itself (``mlflow.log_metric(..., step=epoch)``, ``log_params``, artifacts) goes to
``./mlruns`` in the working directory and is imported into that run after the payload ends.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

__all__ = [
    "attempt",
    "checkpoint_dir",
    "latest_checkpoint",
    "load_point",
    "point_id",
    "report",
    "report_intermediate",
    "training_files",
    "workdir",
]

ENV_WORKDIR = "PHPO_WORKDIR"
ENV_INPUT = "PHPO_INPUT_FILE"
ENV_OUTPUT = "PHPO_OUTPUT_FILE"
ENV_TRAINING = "PHPO_TRAINING_DATA_FILE"
ENV_CKPT_SAVE = "PHPO_CHECKPOINT_TO_SAVE"
ENV_CKPT_LOAD = "PHPO_CHECKPOINT_TO_LOAD"
ENV_RESUMED = "PHPO_RESUMED"
ENV_INTERMEDIATE = "PHPO_INTERMEDIATE_FILE"
ENV_CONTROL = "PHPO_CONTROL_FILE"
ENV_POINT_ID = "PHPO_POINT_ID"
ENV_ATTEMPT = "PHPO_ATTEMPT"


def workdir() -> Path:
    """The job's working directory (the only place a payload writes)."""
    return Path(os.environ.get(ENV_WORKDIR) or os.getcwd())


def _file(env: str, default: str) -> Path:
    return workdir() / os.environ.get(env, default)


def point_id() -> int | None:
    v = os.environ.get(ENV_POINT_ID)
    return int(v) if v else None


def attempt() -> int:
    """1 for the first try of this point, 2 for the first retry, ..."""
    return int(os.environ.get(ENV_ATTEMPT, "1"))


def load_point() -> dict[str, Any]:
    """The hyperparameters of the point to evaluate (``evaluationInput``)."""
    with open(_file(ENV_INPUT, "input.json")) as f:
        return json.load(f)


def training_files() -> list[str]:
    """The training files of this job (``evaluationTrainingData``); empty without any."""
    path = _file(ENV_TRAINING, "input_ds.json")
    if not path.exists():
        return []
    with open(path) as f:
        data = json.load(f)
    return [str(x) for x in data] if isinstance(data, list) else []


def _checkpoint_paths() -> list[str]:
    return [p.strip() for p in os.environ.get(ENV_CKPT_SAVE, "").split(",") if p.strip()]


def checkpoint_dir() -> Path:
    """Where to write checkpoints: the first ``checkPointToSave`` entry (created as a
    directory when it does not exist yet and has no file suffix), else the working directory."""
    paths = _checkpoint_paths()
    if not paths:
        return workdir()
    p = workdir() / paths[0]
    if p.is_dir() or (not p.exists() and not p.suffix):
        p.mkdir(parents=True, exist_ok=True)
        return p
    return p.parent


def latest_checkpoint() -> Path | None:
    """The checkpoint this point resumes from, or ``None`` on a fresh start: with
    ``checkPointToLoad`` the tarball placed under that name, else the first restored
    ``checkPointToSave`` path that exists."""
    load = os.environ.get(ENV_CKPT_LOAD)
    if load:
        p = workdir() / load
        return p if p.exists() else None
    if os.environ.get(ENV_RESUMED) == "0":
        return None
    for rel in _checkpoint_paths():
        p = workdir() / rel
        if p.exists() and (p.is_file() or any(p.iterdir())):
            return p
    return None


def report(
    loss: float | list[float] | None,
    metrics: dict[str, Any] | None = None,
    status: int = 0,
    message: str | None = None,
) -> Path:
    """Write the output file of the contract (``{"status", "loss", "message", "metrics"}``).
    A loss of 0.0 is a real value. The file is written whole or not at all (rename), so the
    agent never reads half of it."""
    if status == 0:
        if loss is None:
            raise ValueError("report(): a successful result (status 0) needs a loss")
        values = loss if isinstance(loss, list) else [loss]
        if not values or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            raise ValueError(f"report(): loss must be a finite number or a list of them, got {loss!r}")
    out: dict[str, Any] = {"status": int(status), "loss": loss}
    if message is not None:
        out["message"] = str(message)
    if metrics is not None:
        out["metrics"] = metrics
    path = _file(ENV_OUTPUT, "output.json")
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(out, f)
    tmp.replace(path)
    return path


def report_intermediate(step: int, value: float) -> bool:
    """Send an intermediate value (e.g. the validation loss of an epoch) to the server through
    the agent, which forwards it with its next heartbeat (a NaN or infinite value is sent as
    null, with a warning in the agent's log: JSON has neither). Returns ``True`` to continue, ``False`` when the
    server asked the agent to stop this point early (pruning)."""
    path = os.environ.get(ENV_INTERMEDIATE)
    if path:
        record = {"point_id": point_id(), "step": int(step), "value": float(value), "t": time.time()}
        with open(workdir() / path, "a") as f:
            f.write(json.dumps(record) + "\n")
    control = os.environ.get(ENV_CONTROL)
    if control:
        try:
            with open(workdir() / control) as f:
                stop = json.load(f).get("stop_points", [])
        except (OSError, ValueError):
            return True
        pid = point_id()
        if pid is not None and pid in stop:
            return False
    return True
