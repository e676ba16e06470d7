"""Segment planning: what each open segment needs now (points to ask for, or its end), from how
many of its points are ready, leased and done; and one pass's plan over the running tasks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from phpo.schemas.tasks import TaskSpec

from ...db.engine import Database
from ...db.tables import SegmentRow
from ...repositories import iterations as iteration_repo
from ...repositories import points as point_repo
from ...repositories import segments as segment_repo
from ...repositories import tasks as task_repo
from .specs import TaskSpecs


@dataclass
class SegmentPlan:
    task_id: int
    seg_idx: int
    n: int = 0  # points to ask for
    finish: str | None = None  # reason, when the segment is done


def plan_segment(spec: TaskSpec, seg: SegmentRow, n_of: Callable[[str], int]) -> SegmentPlan:
    """The plan of one open segment; ``n_of(state)`` counts its points ``ready``, ``leased``
    and ``done`` (evaluated or failed)."""
    plan = SegmentPlan(seg.task_id, seg.idx)
    ready, leased = n_of("ready"), n_of("leased")
    done = n_of("done")
    in_flight = ready + leased
    if done >= spec.maxPoints:
        plan.finish = f"maxPoints ({spec.maxPoints}) evaluated"
    elif seg.n_jobs >= spec.max_evaluation_jobs:
        if leased == 0:
            plan.finish = f"maxEvaluationJobs ({spec.max_evaluation_jobs}) used"
    elif seg.finished_reason:
        if in_flight == 0:
            plan.finish = seg.finished_reason
    elif seg.n_generated >= spec.maxPoints:
        if in_flight == 0:
            plan.finish = f"maxPoints ({spec.maxPoints}) generated and done"
    else:
        room = spec.maxPoints - seg.n_generated
        min_unevaluated = spec.min_unevaluated_points  # upstream's 0 for a steering command
        if min_unevaluated is None:
            deficit = spec.nParallelEvaluation - in_flight
            if deficit > 0:
                plan.n = min(deficit, spec.nPointsPerIteration, room)
        elif in_flight <= min_unevaluated:
            plan.n = min(spec.nPointsPerIteration, room)
    return plan


@dataclass
class PassPlan:
    """What one pass does: segments and tasks to finish, built-in iterations to start, steering
    jobs to queue (task id -> points)."""

    running: list[int] = field(default_factory=list)  # the running tasks the pass read
    finishes: list[SegmentPlan] = field(default_factory=list)
    done_tasks: list[int] = field(default_factory=list)
    asks: list[SegmentPlan] = field(default_factory=list)
    external_asks: dict[int, int] = field(default_factory=dict)


class PassPlanner:
    """Reads the running tasks' open segments and their points in flight, and plans each segment."""

    def __init__(self, db: Database, specs: TaskSpecs):
        self.db = db
        self.specs = specs

    def plan(self, only: set[tuple[int, int]] | None, busy: set[tuple[int, int]]) -> PassPlan:
        """The plan over every running task, or only over the (task_id, segment_idx) pairs in
        ``only``; built-in segments in ``busy`` (an iteration in flight) are left out."""
        by_tid: dict[int, set[int]] | None = None
        if only is not None:
            by_tid = {}
            for tid, idx in only:
                by_tid.setdefault(tid, set()).add(idx)
        out = PassPlan()
        with self.db.read() as s:
            tasks = task_repo.running_tasks(s, ids=None if by_tid is None else sorted(by_tid))
            if not tasks:
                return out
            ids = [t[0] for t in tasks]
            new = [tid for tid in ids if tid not in self.specs]  # specs never change: decode each once
            for tid, raw in task_repo.task_specs(s, ids=new):
                self.specs.parse(tid, raw)
            # a partial pass reads only the segments it was woken for (and their points)
            segs = segment_repo.open_segments(s, task_ids=ids, only=by_tid)
            # only points in flight are counted (O(in flight) per pass, not O(all points)); the
            # ended ones follow: in an unfinished segment of a running task no point is
            # cancelled, so evaluated + failed = n_generated - ready - leased (see plan_segment)
            counts = point_repo.in_flight_counts(s, task_ids=ids, only=by_tid)
            ext = [tid for tid, opt in tasks if opt == "external"]
            active_steering = iteration_repo.tasks_with_steering_job(s, task_ids=ext)
            # a task whose segments have all finished has none left in ``segs`` (known only to a
            # full pass; a partial one sees some segments)
            all_done = set(ids) - {sg.task_id for sg in segs} if only is None else set()
        out.running = ids
        optimizer = dict(tasks)
        by_task: dict[int, list[SegmentRow]] = {}
        for seg in segs:
            by_task.setdefault(seg.task_id, []).append(seg)
        for tid in ids:
            external = optimizer[tid] == "external"
            if tid in all_done:
                out.done_tasks.append(tid)
                continue
            for seg in by_task.get(tid, []):
                if not external and (tid, seg.idx) in busy:
                    continue
                plan = plan_segment(
                    self.specs[tid],
                    seg,
                    lambda st, t=tid, i=seg.idx, g=seg.n_generated: (
                        g - counts.get((t, i, "ready"), 0) - counts.get((t, i, "leased"), 0)
                        if st == "done"
                        else counts.get((t, i, st), 0)
                    ),
                )
                if plan.finish:
                    out.finishes.append(plan)
                elif plan.n > 0:
                    if external:
                        if tid not in active_steering:
                            out.external_asks[tid] = max(out.external_asks.get(tid, 0), plan.n)
                    else:
                        out.asks.append(plan)
        return out
