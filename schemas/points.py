"""Points (hyperparameter sets) and their results."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .states import PointState

Loss = float | list[float]


def check_loss(v: Any) -> Loss | None:
    """A loss is a finite number or a non-empty list of them. ``0.0`` is a real value."""
    if v is None:
        return None
    if isinstance(v, bool):
        raise ValueError("loss must be a number or a list of numbers, not a boolean")
    if isinstance(v, (int, float)):
        if not math.isfinite(v):
            raise ValueError(f"loss must be finite, got {v}")
        return float(v)
    if isinstance(v, list) and v:
        return [check_loss(x) for x in v]  # type: ignore[misc]
    raise ValueError(f"loss must be a number or a non-empty list of numbers, got {v!r}")


class IntermediateValue(BaseModel):
    step: int
    value: float | None = Field(description="null where the payload reported NaN or Infinity")


class Point(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: int
    task_id: int
    segment_id: int = 0
    segment: str = ""
    serial: int = Field(description="0-based position of the point within its segment")
    params: dict[str, Any]
    state: PointState
    loss: Loss | None = None
    metrics: dict[str, Any] | None = None
    attempts: int = Field(
        default=0,
        description="runs of this point so far: failed or lost ones, plus the one "
        "that evaluated it or runs it now",
    )
    error: str | None = None
    intermediate: list[IntermediateValue] = Field(default_factory=list)
    created_at: datetime | None = None
    evaluated_at: datetime | None = None
    site: str | None = None


class EvaluationOutput(BaseModel):
    """The payload's ``evaluationOutput`` file (docs/payloads.md). Keys beyond status, loss,
    message and metrics are kept (``model_extra``): the agent files them under the point's
    metrics, so nothing a payload reports is dropped without a word."""

    model_config = ConfigDict(extra="allow")
    status: int = 0
    loss: Loss | None = None
    message: str | None = None
    metrics: dict[str, Any] | None = None

    @field_validator("loss", mode="before")
    @classmethod
    def _loss(cls, v: Any) -> Any:
        return check_loss(v)

    def all_metrics(self) -> dict[str, Any] | None:
        """``metrics`` plus every other key of the file; a key in both keeps the ``metrics`` value."""
        extra = dict(self.model_extra or {})
        if not extra:
            return self.metrics
        return {**extra, **(self.metrics or {})}


class BestPoint(BaseModel):
    """Best point of a task or segment; ``pareto`` lists the front for multi-objective tasks."""

    segment_id: int = 0
    segment: str = ""
    point_id: int | None = None
    serial: int | None = None
    loss: Loss | None = None
    params: dict[str, Any] | None = None
    pareto: list[BestPoint] | None = None
