"""Rules of the point machine: what a failed attempt becomes.

The broker proposes ``leased -> failed`` for an attempt that ended without a result, with an
:class:`AttemptEnded` context; the rules below decide, in the policy's order, whether the point
is cancelled (its task ended), given back without spending an attempt (its task is paused),
retried (attempts left) or failed. A new terminal state (say ``pruned``) proposed from
``leased`` matches none of them: it is never retried.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from phpo.schemas.states import TERMINAL_TASK_STATES, PointState, TaskState

from .rules import Proposal, TransitionRule


@dataclass(frozen=True)
class AttemptEnded:
    """What the rules need to know about a point whose attempt ended without a result."""

    task_state: str
    max_attempts: int
    spend: bool = True  # the attempt counts (False: the stop was ours)
    final: bool = False  # the agent said: do not retry
    on_ready: Callable[[], None] = lambda: None  # the point is ready again (wake waiting agents)


def _attempt(p: Proposal) -> AttemptEnded | None:
    return p.context if isinstance(p.context, AttemptEnded) else None


class _FailedAttemptRule(TransitionRule):
    """The rules that decide what ``leased -> failed`` of an ended attempt becomes."""

    KIND = "point"
    FROM_STATES = frozenset({PointState.leased})
    TO_STATES = frozenset({PointState.failed})


class CancelPointsOfEndedTask(_FailedAttemptRule):
    def before_transition(self, p: Proposal) -> None:
        a = _attempt(p)
        if a is not None and a.task_state in TERMINAL_TASK_STATES:
            p.reroute(PointState.cancelled, why=f"its task is {a.task_state}")


class RequeuePointsOfPausedTask(_FailedAttemptRule):
    """A paused task's attempt was stopped by us: ready again, no attempt spent, no error."""

    def before_transition(self, p: Proposal) -> None:
        a = _attempt(p)
        if a is not None and a.task_state != TaskState.running:
            p.reroute(PointState.ready, why=f"its task is {a.task_state}", message=None)


class RetryFailedPoints(_FailedAttemptRule):
    """An attempt that failed spends one; with attempts left (and no ``final``) the point is
    ready again, keeping the attempt's error."""

    def before_transition(self, p: Proposal) -> None:
        a = _attempt(p)
        if a is None:
            return
        if a.spend:
            p.row.attempts += 1
        if not a.final and p.row.attempts < a.max_attempts:
            p.reroute(PointState.ready, why=f"attempt {p.row.attempts} of {a.max_attempts} failed")


class ReleaseRequeuedPoint(TransitionRule):
    """A point back in the queue belongs to no job; waiting agents are woken after the commit."""

    KIND = "point"
    FROM_STATES = frozenset({PointState.leased})
    TO_STATES = frozenset({PointState.ready})

    def after_transition(self, p: Proposal) -> None:
        p.row.job_id = None
        a = _attempt(p)
        if a is not None:
            a.on_ready()
