"""Registered models: the best point's model of each segment of a task, in MLflow's model
registry (the MLflow bridge registers it when the segment ends; ``phpo serve`` serves it).

Name: the task's ``outDS`` (``task-<id>`` without one) with every character other than letters,
digits, ``.``, ``_`` and ``-`` replaced by ``_`` (MLflow refuses ``/`` and ``:`` in a name, and
``phpo serve --model NAME:VERSION`` splits at the ``:``); a segmented task registers one model
per segment, named ``<outDS>.<segment name>`` the same way. Each task that ends with a model adds
a version to its name, so tasks of the same ``outDS`` are versions 1, 2, ... of one model.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MODEL_NAME_MAX = 200
_BAD = re.compile(r"[^A-Za-z0-9._\-]+")


def model_name(task_id: int, out_ds: str | None, segment: str | None = None) -> str:
    """The registered model name of a task's segment (``segment`` None: an unsegmented task)."""
    base = _BAD.sub("_", (out_ds or "").strip().strip("/")).strip("._") or f"task-{task_id}"
    if segment is not None:
        base = f"{base}.{_BAD.sub('_', segment).strip('._') or 'segment'}"
    return base[:MODEL_NAME_MAX]


class RegisteredModel(BaseModel):
    """``GET /tasks/{id}/models``: one entry per segment."""

    model_config = ConfigDict(extra="ignore")
    segment_id: int = 0
    segment: str | None = Field(default=None, description="the segment's name (segmented tasks)")
    status: Literal["pending", "registered", "no_model", "error"] = Field(
        description="pending: the segment has not ended or its best run is not complete yet; registered: "
        "name/version/uri are set; no_model: the best point's payload saved no model (sdk.save_model); "
        "error: registering failed (detail)"
    )
    point_id: int | None = None
    loss: float | list[float] | None = None
    name: str | None = None
    version: str | None = None
    uri: str | None = Field(default=None, description="models:/NAME/VERSION, for mlflow.pyfunc.load_model")
    source: str | None = Field(default=None, description="where MLflow keeps the model files")
    run_id: str | None = None
    detail: str | None = None
