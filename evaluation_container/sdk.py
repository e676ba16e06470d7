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

:func:`save_model` hands phpo the trained model (PyTorch, Keras or scikit-learn) as an MLflow
model in that run (``model/``); at the end of the task the best point's model is registered in
MLflow's model registry (docs/serving.md).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from phpo.schemas.payload import (
    DEFAULT_INPUT,
    DEFAULT_OUTPUT,
    DEFAULT_TRAINING_DATA,
    ENV_ATTEMPT,
    ENV_CKPT_LOAD,
    ENV_CKPT_SAVE,
    ENV_CONTROL,
    ENV_ELASTIC_SINCE,
    ENV_INPUT,
    ENV_INTERMEDIATE,
    ENV_OUTPUT,
    ENV_POINT_ID,
    ENV_RESUMED,
    ENV_TRAINING,
    ENV_WORKDIR,
)

__all__ = [
    "attempt",
    "checkpoint_dir",
    "latest_checkpoint",
    "load_point",
    "point_id",
    "report",
    "report_intermediate",
    "save_model",
    "training_data",
    "training_files",
    "workdir",
]


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
    with open(_file(ENV_INPUT, DEFAULT_INPUT)) as f:
        return json.load(f)


def training_files() -> list[str]:
    """The training files of this job (``evaluationTrainingData``); empty without any."""
    path = _file(ENV_TRAINING, DEFAULT_TRAINING_DATA)
    if not path.exists():
        return []
    with open(path) as f:
        data = json.load(f)
    return [str(x) for x in data] if isinstance(data, list) else []


def training_data(labels: Any = None, **options: Any):
    """The job's training files (``trainingDS``, or its segment's files) as a
    :class:`phpo.data.Stream`: chunks and batches of normalised, padded float32 matrices.

    ``labels``: one number per file, a dict ``{part of a file name: label}`` (every file must
    match exactly one key), or a function ``file -> label``; or give ``label_branch=``. Other
    keyword arguments go to :class:`phpo.data.Stream` (``tree``, ``branches``, ``chunk_size``,
    ``jagged_cap``, ...). The specs pass runs once for the task's files and is kept in
    ``PHPO_DATA_CACHE`` (set by the agent; default ``~/.cache/phpo/data``): the task's other
    jobs on this machine reuse it (``stream.specs_source == "cache"``), and on other machines
    the agent hands it over from the task's ``specs`` artifact (``"shared"``).
    Needs ``phpo[data]``."""
    from phpo.data import DataError, Stream
    from phpo.data.specs import default_cache_dir

    files = training_files()
    if not files:
        raise DataError("this job has no training files: submit the task with --trainingDS")
    if callable(labels):
        labels = [labels(f) for f in files]
    elif isinstance(labels, dict):
        by_file = []
        for f in files:
            hits = [v for k, v in labels.items() if k in os.path.basename(f)]
            if len(hits) != 1:
                raise DataError(
                    f"{len(hits)} of the label keys {sorted(labels)} match this file; exactly one must", f
                )
            by_file.append(hits[0])
        labels = by_file
    options.setdefault("cache_dir", default_cache_dir())
    return Stream(files, labels=labels, **options)


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
    # an elastic point's ranks restart when members come or go: a checkpoint this attempt wrote
    # since its first start is resumed from even on a fresh attempt
    since = float(os.environ.get(ENV_ELASTIC_SINCE) or "inf")
    fresh = os.environ.get(ENV_RESUMED) == "0"
    for rel in _checkpoint_paths():
        p = workdir() / rel
        files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()] if p.is_dir() else []
        if files and (not fresh or any(f.stat().st_mtime >= since for f in files)):
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
    path = _file(ENV_OUTPUT, DEFAULT_OUTPUT)
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


MODEL_ARTIFACT = "model"
"""Where :func:`save_model` puts the model in the point's MLflow run (what the server registers)."""


def _flavor(model: Any) -> str:
    mod = type(model).__module__.split(".")[0]
    if mod in ("keras", "tensorflow", "tf_keras"):
        return "keras"
    try:
        import torch

        if isinstance(model, torch.nn.Module):
            return "pytorch"
    except ImportError:
        pass
    if mod == "sklearn" or (hasattr(model, "predict") and hasattr(model, "get_params")):
        return "sklearn"
    raise TypeError(
        f"save_model(): cannot tell the framework of a {type(model).__qualname__} "
        "(PyTorch nn.Module, Keras model or scikit-learn estimator); pass flavor="
    )


def _n_features(model: Any, flavor: str) -> int | None:
    if flavor == "sklearn":
        return getattr(model, "n_features_in_", None)
    if flavor == "pytorch":
        import torch

        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                return m.in_features
        return None
    shape = getattr(model, "input_shape", None)  # keras
    return shape[-1] if isinstance(shape, tuple) and isinstance(shape[-1], int) else None


def save_model(model: Any, input_example: Any = None, flavor: str | None = None) -> str:
    """Hand phpo the trained model of this point: it is saved as an MLflow model (flavour
    ``pytorch``, ``keras`` or ``sklearn``, told from the model or given as ``flavor``) into the
    point's MLflow run under ``model/``. When the task ends, the best point's model (of each
    segment) is registered in MLflow's model registry and ``phpo best ID --model`` says where;
    ``phpo serve`` serves it.

    ``input_example``: a few rows of features (a 2-D array); without it a row of zeros of the
    model's input width is used (scikit-learn ``n_features_in_``, the first ``nn.Linear`` of a
    PyTorch model, a Keras ``input_shape``). The model's signature (feature count and type) is
    taken from it, so the service can refuse a request of the wrong shape with a clear error.
    A PyTorch model is traced to TorchScript, so loading it needs neither the payload's classes
    nor its source. Returns the model's URI in the working directory's MLflow store
    (``runs:/RUN/model``).
    Needs MLflow (and the framework) in the payload's environment."""
    import shutil

    import mlflow
    import numpy as np
    from mlflow.models import infer_signature

    flavor = flavor or _flavor(model)
    if flavor not in ("pytorch", "keras", "sklearn"):
        raise ValueError(f"save_model(): flavor {flavor!r}: use pytorch, keras or sklearn")
    if input_example is None:
        n = _n_features(model, flavor)
        if n is None:
            raise ValueError(
                "save_model(): cannot tell the model's number of input features: pass input_example "
                "(a few rows of features)"
            )
        input_example = np.zeros((1, n), dtype=np.float32)
    example = np.asarray(input_example, dtype=np.float32)
    if example.ndim != 2:
        raise ValueError(
            f"save_model(): input_example must be 2-D (rows x features), got shape {example.shape}"
        )
    folder = workdir() / ".phpo-model"
    shutil.rmtree(folder, ignore_errors=True)
    if flavor == "pytorch":
        import mlflow.pytorch
        import torch

        model.eval()
        with torch.no_grad():
            traced = torch.jit.trace(model, torch.from_numpy(example))
            out = traced(torch.from_numpy(example)).numpy()
        mlflow.pytorch.save_model(
            traced,
            str(folder),
            signature=infer_signature(example, out),
            serialization_format="pickle",
            pip_requirements=mlflow.pytorch.get_default_pip_requirements(),
        )
    elif flavor == "sklearn":
        import mlflow.sklearn

        mlflow.sklearn.save_model(
            model,
            str(folder),
            signature=infer_signature(example, model.predict(example)),
            pip_requirements=mlflow.sklearn.get_default_pip_requirements(),
        )
    else:
        import mlflow.keras

        out = np.asarray(model.predict(example, verbose=0))
        mlflow.keras.save_model(model, str(folder), signature=infer_signature(example, out))
    try:
        run_id = _log_to_run(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return f"runs:/{run_id}/{MODEL_ARTIFACT}"


def _log_to_run(folder: Path) -> str:
    """Into the payload's active MLflow run, else the one run of its store (so the point keeps
    one run), else a new one."""
    import mlflow

    active = mlflow.active_run()
    if active is not None:
        mlflow.log_artifacts(str(folder), MODEL_ARTIFACT)
        return active.info.run_id
    runs = mlflow.search_runs(
        search_all_experiments=True,
        output_format="list",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    with mlflow.start_run(run_id=runs[0].info.run_id if runs else None) as run:
        mlflow.log_artifacts(str(folder), MODEL_ARTIFACT)
        return run.info.run_id
