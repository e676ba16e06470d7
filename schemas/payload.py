"""The payload's side of a job, declared once for the agent (which sets it up), ``phpo
run-local`` (which imitates the agent) and the SDK (which a payload imports): the environment
variables a payload is started with, the files it exchanges with the agent, the upstream
default file names, and the names phpo gives a task's MLflow experiment and a point's run.
Users read the same contract in docs/payloads.md.

The command placeholders (``%IN``, ``%OUT``, ``%NUM_POINTS``, ``%MAX_POINTS``,
``%SEGMENT_NAME``) and their substitution are upstream conventions: :mod:`.upstream`.
"""

from __future__ import annotations

from typing import Any

# --- environment of a payload (docs/payloads.md, "Environment")
ENV_WORKDIR = "PHPO_WORKDIR"
ENV_INPUT = "PHPO_INPUT_FILE"
ENV_OUTPUT = "PHPO_OUTPUT_FILE"
ENV_TRAINING = "PHPO_TRAINING_DATA_FILE"
ENV_META = "PHPO_META_FILE"
ENV_METRICS = "PHPO_METRICS_FILE"
ENV_CKPT_SAVE = "PHPO_CHECKPOINT_TO_SAVE"
ENV_CKPT_LOAD = "PHPO_CHECKPOINT_TO_LOAD"
ENV_RESUMED = "PHPO_RESUMED"
ENV_INTERMEDIATE = "PHPO_INTERMEDIATE_FILE"
ENV_CONTROL = "PHPO_CONTROL_FILE"
ENV_POINT_ID = "PHPO_POINT_ID"
ENV_POINT_SERIAL = "PHPO_POINT_SERIAL"
ENV_ATTEMPT = "PHPO_ATTEMPT"
ENV_JOB_ID = "PHPO_JOB_ID"
ENV_TASK_ID = "PHPO_TASK_ID"
ENV_SEGMENT = "PHPO_SEGMENT"
ENV_SEGMENT_ID = "PHPO_SEGMENT_ID"
ENV_SITE = "PHPO_SITE"
ENV_AGENT = "PHPO_AGENT"
ENV_GPUS = "PHPO_GPUS"
ENV_MLFLOW_RUN_ID = "PHPO_MLFLOW_RUN_ID"
# an elastic point (nNodesPerPoint MIN:MAX): when its ranks were first started (Unix time); torchrun
# restarts them when members come or go, and a checkpoint written since is this attempt's own
ENV_ELASTIC_SINCE = "PHPO_ELASTIC_SINCE"

# --- files in the job's working directory
PHPO_DIR = ".phpo"  # the agent's files inside a job's working directory (SDK exchange)
INTERMEDIATE_FILE = f"{PHPO_DIR}/intermediate.jsonl"  # one JSON record a line, appended by the SDK
CONTROL_FILE = f"{PHPO_DIR}/control.json"  # {"stop_points": [...]}, written by the agent
# upstream's default names (evaluationInput, evaluationTrainingData, evaluationOutput)
DEFAULT_INPUT = "input.json"
DEFAULT_TRAINING_DATA = "input_ds.json"
DEFAULT_OUTPUT = "output.json"


# --- MLflow names (docs/payloads.md, "MLflow")
def experiment_name(task_id: int, spec: Any) -> str:
    """A task's MLflow experiment: its ``outDS``, ``task-<id>`` when it has none. ``spec``: the
    task spec as a model, a dict or ``None``."""
    out_ds = spec.get("outDS") if isinstance(spec, dict) else getattr(spec, "outDS", None)
    return out_ds or f"task-{task_id}"


def run_name(point_id: int) -> str:
    """The point's run is named as the CLI names the point (``phpo show``/``best``: "point 6")."""
    return f"point-{point_id}"
