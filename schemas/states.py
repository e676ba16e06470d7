"""The state machines of phpo, declared once.

Every entity's states and the transitions allowed between them live here; the server's
``set_state`` is the only writer of a ``state`` column and asks :func:`check_transition`
before every change, so an illegal transition is refused in one place.
"""

from __future__ import annotations

from enum import StrEnum


class TaskState(StrEnum):
    submitted = "submitted"
    running = "running"
    paused = "paused"
    finished = "finished"
    failed = "failed"
    cancelled = "cancelled"


class PointState(StrEnum):
    ready = "ready"  # generated, waiting for an evaluation job
    leased = "leased"  # held by a running job
    evaluated = "evaluated"  # has a loss
    failed = "failed"  # every attempt failed; never given a made-up loss
    cancelled = "cancelled"  # its task ended before it was evaluated
    pruned = "pruned"  # stopped early by the task's pruner; its loss is its last intermediate value


class JobState(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    lost = "lost"  # lease expired without a heartbeat
    cancelled = "cancelled"


class NodeState(StrEnum):
    waiting = "waiting"
    ready = "ready"
    running = "running"
    done = "done"
    failed = "failed"
    skipped = "skipped"
    cancelled = "cancelled"  # its workflow was cancelled


class WorkflowState(StrEnum):
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class SegmentState(StrEnum):
    """A segment's search: stored as the boolean ``segments.finished`` (``open`` = false)."""

    open = "open"  # points may still be generated and leased
    finished = "finished"  # its search ended (``finished_reason`` says why); never reopened


class MlflowSyncState(StrEnum):
    """Where a point's (or a segment's parent) MLflow run stands (``synced`` column)."""

    queued = "queued"  # run created SCHEDULED: its point waits for a job
    open = "open"  # run RUNNING: its point is leased (or ended and its result not sent yet)
    done = "done"  # terminated with the point's final status
    error = "error"  # MLflow refused this run or result (a 4xx); never retried


TASK_TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.submitted: frozenset(
        {TaskState.running, TaskState.paused, TaskState.failed, TaskState.cancelled}
    ),
    TaskState.running: frozenset(
        {TaskState.paused, TaskState.finished, TaskState.failed, TaskState.cancelled}
    ),
    TaskState.paused: frozenset({TaskState.running, TaskState.failed, TaskState.cancelled}),
    TaskState.finished: frozenset(),
    TaskState.failed: frozenset(),
    TaskState.cancelled: frozenset(),
}

POINT_TRANSITIONS: dict[PointState, frozenset[PointState]] = {
    PointState.ready: frozenset({PointState.leased, PointState.cancelled}),
    # leased -> ready: lost lease or failed attempt with attempts left
    PointState.leased: frozenset(
        {PointState.evaluated, PointState.failed, PointState.ready, PointState.cancelled, PointState.pruned}
    ),
    PointState.evaluated: frozenset(),
    PointState.pruned: frozenset(),
    PointState.failed: frozenset(),
    PointState.cancelled: frozenset(),
}

JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.queued: frozenset({JobState.running, JobState.cancelled}),
    JobState.running: frozenset({JobState.succeeded, JobState.failed, JobState.lost, JobState.cancelled}),
    JobState.succeeded: frozenset(),
    JobState.failed: frozenset(),
    JobState.lost: frozenset(),
    JobState.cancelled: frozenset(),
}

NODE_TRANSITIONS: dict[NodeState, frozenset[NodeState]] = {
    NodeState.waiting: frozenset({NodeState.ready, NodeState.skipped, NodeState.failed, NodeState.cancelled}),
    NodeState.ready: frozenset({NodeState.running, NodeState.skipped, NodeState.failed, NodeState.cancelled}),
    NodeState.running: frozenset({NodeState.done, NodeState.failed, NodeState.cancelled}),
    # loops re-arm finished nodes for the next iteration
    NodeState.done: frozenset({NodeState.waiting}),
    NodeState.failed: frozenset(),
    NodeState.skipped: frozenset({NodeState.waiting}),
    NodeState.cancelled: frozenset(),
}

WORKFLOW_TRANSITIONS: dict[WorkflowState, frozenset[WorkflowState]] = {
    WorkflowState.running: frozenset(
        {WorkflowState.succeeded, WorkflowState.failed, WorkflowState.cancelled}
    ),
    WorkflowState.succeeded: frozenset(),
    WorkflowState.failed: frozenset(),
    WorkflowState.cancelled: frozenset(),
}

SEGMENT_TRANSITIONS: dict[SegmentState, frozenset[SegmentState]] = {
    SegmentState.open: frozenset({SegmentState.finished}),
    SegmentState.finished: frozenset(),
}

MLFLOW_SYNC_TRANSITIONS: dict[MlflowSyncState, frozenset[MlflowSyncState]] = {
    # queued <-> open follows the point (leased, back to ready); either ends done or error
    MlflowSyncState.queued: frozenset({MlflowSyncState.open, MlflowSyncState.done, MlflowSyncState.error}),
    MlflowSyncState.open: frozenset({MlflowSyncState.queued, MlflowSyncState.done, MlflowSyncState.error}),
    MlflowSyncState.done: frozenset(),
    MlflowSyncState.error: frozenset(),
}

MACHINES: dict[str, dict] = {
    "task": TASK_TRANSITIONS,
    "point": POINT_TRANSITIONS,
    "job": JOB_TRANSITIONS,
    "node": NODE_TRANSITIONS,
    "workflow": WORKFLOW_TRANSITIONS,
    "segment": SEGMENT_TRANSITIONS,
    "mlflow_sync": MLFLOW_SYNC_TRANSITIONS,
}


def terminal_states(machine: dict) -> frozenset:
    """The states of ``machine`` with no way out (computed, so a new final state is terminal
    the moment it is declared)."""
    return frozenset(state for state, targets in machine.items() if not targets)


TERMINAL_TASK_STATES = terminal_states(TASK_TRANSITIONS)
TERMINAL_POINT_STATES = terminal_states(POINT_TRANSITIONS)
TERMINAL_JOB_STATES = terminal_states(JOB_TRANSITIONS)
TERMINAL_WORKFLOW_STATES = terminal_states(WORKFLOW_TRANSITIONS)
# nodes: done and skipped are re-armed by loops, yet they are the end of one iteration
TERMINAL_NODE_STATES = frozenset({NodeState.done, NodeState.failed, NodeState.skipped, NodeState.cancelled})
TERMINAL_MLFLOW_SYNC_STATES = terminal_states(MLFLOW_SYNC_TRANSITIONS)


def task_succeeded(state: str, n_evaluated: int) -> bool:
    """The one meaning of "this task worked", shared by ``phpo wait``/``show``/``best`` and the
    workflow engine's ``hpo`` nodes: the task is ``finished`` and at least one point has a loss.
    A task that ended any other way, or without a single evaluated point, failed."""
    return str(state) == TaskState.finished.value and n_evaluated > 0


class IllegalTransition(ValueError):
    """A state change the machine does not allow; the server answers 409."""

    def __init__(self, kind: str, current: str, target: str):
        allowed = sorted(str(s) for s in MACHINES[kind][type(next(iter(MACHINES[kind])))(current)])
        super().__init__(
            f"a {kind} in state '{current}' cannot become '{target}'"
            + (f" (allowed: {', '.join(allowed)})" if allowed else f" ('{current}' is final)")
        )
        self.kind, self.current, self.target = kind, str(current), str(target)


def allowed(kind: str, current: str, target: str) -> bool:
    machine = MACHINES[kind]
    enum = type(next(iter(machine)))
    return enum(target) in machine[enum(current)]


def check_transition(kind: str, current: str, target: str) -> None:
    """Raise :class:`IllegalTransition` unless ``current -> target`` is allowed for ``kind``."""
    if not allowed(kind, current, target):
        raise IllegalTransition(kind, current, target)
