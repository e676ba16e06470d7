"""The pruning decider: whether a point that just reported an intermediate value should stop.

Each task segment with a pruner (``TaskSpec.pruner``) has an Optuna in-memory study built from
the database: one trial per point of the segment, in serial order (so a trial's number is the
point's serial, which Hyperband's brackets depend on), holding the point's intermediate values
and its end (evaluated: COMPLETE with the watched objective, pruned: PRUNED, failed/cancelled:
FAIL). The decision is the pruner's own ``prune(study, trial)`` (Optuna's classes,
:mod:`phpo.steering.pruners`), called once per new step of the reporting point, as Optuna's
``trial.report`` + ``trial.should_prune`` would be.

The study is a cache: it is keyed by the segment's points changed since the last look (the
broker stamps ``updated_at`` with every intermediate value and every state change), so one
report costs two small queries plus the new steps. A change is stamped before its transaction
commits, so one can become visible after a later-stamped one was read (another replica, a
concurrent heartbeat, clocks a little apart): the look goes back ``LATE_COMMIT_S`` before the
newest stamp seen, reading just ids and stamps there, and reads the record of each point whose
stamp differs from the one the study holds (the reporting points always). A server started
afresh rebuilds the study by replaying every point's steps in serial order (stateful pruners
such as ASHA keep their rungs in trial attributes, which the replay sets exactly as the
uninterrupted run did): the same database gives the same decisions.

Decisions are stored, not remembered: a pruned point is in state ``pruned`` (with its last
intermediate value as its loss) and the broker answers every heartbeat of its job with it in
``stop_points`` until the job ends, so an answer lost on the way is repeated.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import optuna
from optuna.trial import TrialState, create_trial
from phpo.schemas.states import PointState
from phpo.schemas.tasks import TaskSpec
from phpo.steering.pruners import make_pruner
from sqlalchemy.orm import Session

from ..db.tables import PointRow
from ..repositories.pruning import (
    pruned_points_of_job,
    segment_points_by_id,
    segment_points_changed,
    segment_stamps_since,
)

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)
LATE_COMMIT_S = 30.0  # how long before the newest stamp seen a change may still commit

_ENDED = {
    PointState.evaluated: TrialState.COMPLETE,
    PointState.pruned: TrialState.PRUNED,
    PointState.failed: TrialState.FAIL,
    PointState.cancelled: TrialState.FAIL,
}


def steps_of(intermediate: list[Any] | None) -> dict[int, float]:
    """A point's stored intermediate values as {step: value} (a later report of a step wins;
    null values, NaN or infinite at the source, are left out)."""
    out: dict[int, float] = {}
    for rec in intermediate or []:
        v = rec.get("value") if isinstance(rec, dict) else None
        if v is not None and math.isfinite(float(v)):
            out[int(rec["step"])] = float(v)
    return out


def objective_value(loss: Any, index: int) -> float | None:
    v = loss[index] if isinstance(loss, list) else loss
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


@dataclass
class _Segment:
    study: optuna.Study
    pruner: optuna.pruners.BasePruner
    trial_of: dict[int, int] = field(default_factory=dict)  # point id -> trial id
    steps: dict[int, set[int]] = field(default_factory=dict)  # point id -> steps the study holds
    state: dict[int, str] = field(default_factory=dict)  # point id -> state the study holds
    stamp: dict[int, datetime] = field(default_factory=dict)  # point id -> updated_at the study holds
    watermark: datetime | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class PruningDecider:
    """One per server; thread-safe (one lock per segment)."""

    def __init__(self) -> None:
        self._segments: dict[tuple[int, int], _Segment] = {}
        self._lock = threading.Lock()

    def forget(self, task_id: int) -> None:
        with self._lock:
            for key in [k for k in self._segments if k[0] == task_id]:
                del self._segments[key]

    def decide(
        self, s: Session, task_id: int, seg_idx: int, spec: TaskSpec, point_ids: set[int]
    ) -> dict[int, str]:
        """The points of ``point_ids`` (which just reported) that are to stop: {id: why}."""
        if spec.pruner == "none":
            return {}
        key = (task_id, seg_idx)
        with self._lock:
            seg = self._segments.get(key)
            if seg is None:
                seg = self._segments[key] = self._new(task_id, seg_idx, spec)
        with seg.lock:
            return self._update(s, seg, task_id, seg_idx, spec, point_ids)

    @staticmethod
    def _new(task_id: int, seg_idx: int, spec: TaskSpec) -> _Segment:
        study = optuna.create_study(
            study_name=f"task{task_id}-segment{seg_idx}",
            direction=spec.pruner_direction,
            storage=optuna.storages.InMemoryStorage(),
        )
        pruner = make_pruner(spec.pruner, spec.prunerOptions)
        assert pruner is not None
        return _Segment(study=study, pruner=pruner)

    @staticmethod
    def _changed(s: Session, seg: _Segment, task_id: int, seg_idx: int, reporting: set[int]) -> list:
        """The records of the points changed since the study's last look (all on the first)."""
        if seg.watermark is None:
            return list(segment_points_changed(s, task_id=task_id, segment_idx=seg_idx, since=None))
        since = seg.watermark - timedelta(seconds=LATE_COMMIT_S)
        stamps = segment_stamps_since(s, task_id=task_id, segment_idx=seg_idx, since=since)
        ids = set(reporting) | {i for i, at in stamps if seg.stamp.get(i) != at}
        return list(segment_points_by_id(s, task_id=task_id, segment_idx=seg_idx, ids=sorted(ids)))

    def _update(
        self, s: Session, seg: _Segment, task_id: int, seg_idx: int, spec: TaskSpec, reporting: set[int]
    ) -> dict[int, str]:
        rows = sorted(self._changed(s, seg, task_id, seg_idx, reporting), key=lambda r: r.serial)
        storage, sid = seg.study._storage, seg.study._study_id
        for r in rows:
            if seg.watermark is None or r.updated_at > seg.watermark:
                seg.watermark = r.updated_at
            seg.stamp[r.id] = r.updated_at
            if r.id not in seg.trial_of:
                # one trial per point in serial order, whichever point reports first: a trial's
                # number is its point's place in the segment (Hyperband hashes it into a bracket).
                # What study.add_trial does, keeping the id (no scan of every trial for it).
                seg.trial_of[r.id] = storage.create_new_trial(
                    sid, template_trial=create_trial(state=TrialState.RUNNING)
                )
                seg.steps[r.id] = set()
                seg.state[r.id] = PointState.ready
        # the reporting points last: their decision sees every other point's end first
        rows.sort(key=lambda r: r.id in reporting)
        decided: dict[int, str] = {}
        for r in rows:
            tid = seg.trial_of[r.id]
            if seg.state[r.id] in _ENDED:
                continue  # an ended trial never changes
            have = seg.steps[r.id]
            for step, value in sorted(steps_of(r.intermediate).items()):
                if step in have:
                    continue
                storage.set_trial_intermediate_value(tid, step, value)
                have.add(step)
                if r.id not in decided:
                    # the pruner's own decision for this step; it also records what stateful
                    # pruners keep (ASHA's rungs), so a replay after a restart sets the same.
                    # Only a leased point that is reporting now can be stopped.
                    stop = seg.pruner.prune(seg.study, storage.get_trial(tid))
                    if stop and r.state == PointState.leased and r.id in reporting:
                        decided[r.id] = (
                            f"pruned by {spec.pruner} at step {step} (intermediate value {value:g})"
                        )
            ended = _ENDED.get(PointState(r.state))
            if ended is not None:
                values = None
                if ended == TrialState.COMPLETE:
                    v = objective_value(r.loss, spec.pruner_objective_index)
                    values = None if v is None else [v]
                    if values is None:
                        ended = TrialState.FAIL
                elif ended == TrialState.PRUNED:
                    inter = steps_of(r.intermediate)
                    values = [inter[max(inter)]] if inter else None
                storage.set_trial_state_values(tid, ended, values)
                seg.state[r.id] = r.state
        return decided


def prune_job_points(
    decider: PruningDecider,
    s: Session,
    job: Any,
    spec: TaskSpec,
    rows: dict[int, PointRow] | None,
    reported: set[int],
) -> list[int]:
    """The broker's heartbeat step for a task with a pruner: decide for the points that just
    reported, move those to stop to ``pruned`` (their last intermediate value as their loss) and
    answer every point of ``job`` that is pruned, so a lost answer is given again."""
    if spec.pruner == "none":
        return []
    from ..orchestration.transitions import set_state

    if reported and job.segment_idx is not None:
        for pid, why in decider.decide(s, job.task_id, job.segment_idx, spec, reported).items():
            p = rows[pid] if rows and pid in rows else s.get(PointRow, pid)
            inter = steps_of(p.intermediate)
            last = inter[max(inter)] if inter else None
            if set_state(p, PointState.pruned, message=why, expect=(PointState.leased,)):
                p.loss, p.loss_value = last, last
                log.info("point %d of task %d: %s", pid, job.task_id, why)
    ids = list(job.point_ids or [])
    if rows is not None and all(i in rows for i in ids):
        # the heartbeat loaded every point of the job in this transaction (and the pruned ones
        # were set above, on those objects): the answer needs no query
        return sorted(i for i in ids if rows[i].state == PointState.pruned and rows[i].job_id == job.id)
    return pruned_points_of_job(s, job_id=job.id, point_ids=ids)
