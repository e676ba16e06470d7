"""Which rules run for each machine, in order (Prefect's ``CoreFlowPolicy``): the first rule
that reroutes a proposal wins, later rules see the new proposal."""

from __future__ import annotations

from .point_rules import (
    CancelPointsOfEndedTask,
    ReleaseRequeuedPoint,
    RequeuePointsOfPausedTask,
    RetryFailedPoints,
)
from .rules import TransitionRule
from .segment_rules import CancelReadyPointsOfFinishedSegment
from .task_rules import CancelOpenWork

POLICIES: dict[str, tuple[type[TransitionRule], ...]] = {
    "task": (CancelOpenWork,),
    "point": (CancelPointsOfEndedTask, RequeuePointsOfPausedTask, RetryFailedPoints, ReleaseRequeuedPoint),
    "job": (),
    "segment": (CancelReadyPointsOfFinishedSegment,),
    "mlflow_sync": (),
    "node": (),
    "workflow": (),
}

_INSTANCES: dict[str, tuple[TransitionRule, ...]] = {k: tuple(r() for r in v) for k, v in POLICIES.items()}


def rules_for(kind: str) -> tuple[TransitionRule, ...]:
    return _INSTANCES.get(kind, ())
