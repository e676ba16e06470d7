"""What an evaluation job's results and endings do to its points (the broker's part that
records them): results checked against the task (a loss per objective) and written set-based;
a failed attempt, a lost lease or an ended job gives its points back by the rules of
:mod:`phpo.server.orchestration.point_rules`; successful results of a job whose lease was lost
still count for points nobody has taken since."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from phpo.schemas.jobs import PointResult
from phpo.schemas.states import PointState, TaskState
from sqlalchemy import bindparam
from sqlalchemy.orm import Session

from ..db.tables import JobRow, PointRow, TaskRow
from ..orchestration.point_rules import AttemptEnded
from ..orchestration.transitions import set_state, set_states
from ..repositories import jobs as repo


class JobResults:
    """``info(s, task_id)``: the task's cached facts (objectives, attempts; the broker's
    ``TaskInfo``); ``task(s, task_id)``: its row; ``mark_ready(n)``: wakes ``n`` waiting agents
    after the commit."""

    def __init__(
        self,
        info: Callable[[Session, int], Any],
        task: Callable[[Session, int], TaskRow | None],
        mark_ready: Callable[[int], None],
    ):
        self.info = info
        self._task = task
        self.mark_ready = mark_ready

    def accept_late(self, s: Session, job: JobRow, results: list[PointResult]) -> bool:
        """Successful results of a job whose lease was lost (e.g. the agent lost the network for
        longer than the lease) still count for points nobody else has taken since: the work was
        done, throwing it away would only re-run it. Returns whether any was taken."""
        task = self._task(s, job.task_id)
        if task is None or task.state != TaskState.running:
            return False
        taken = False
        ids = set(job.point_ids or [])
        for r in results:
            if r.status != 0 or r.point_id not in ids or str(r.point_id) in (job.results or {}):
                continue
            p = repo.point_for_update(s, point_id=r.point_id)
            if p.state != PointState.ready:
                continue  # re-leased to another job (or ended): that job's result will count
            set_state(p, PointState.leased)
            p.job_id = job.id
            taken = self.apply_one(s, job, r) or taken
        return taken

    def apply_one(self, s: Session, job: JobRow, r: PointResult) -> bool:
        return bool(self.apply(s, job, [r]))

    def apply(self, s: Session, job: JobRow, results: list[PointResult]) -> set[int]:
        """Record results of ``job``, set-based: its points' states are read and locked in one
        statement (in id order, like every other path) and the successful results written with
        one executemany UPDATE, so a job of k points costs two statements, not 2k ORM round
        trips. Failed attempts (rare) take the ORM path of :meth:`give_back`. Returns the ids of
        the points now evaluated."""
        if not results:
            return set()
        info = self.info(s, job.task_id)
        ids = sorted({r.point_id for r in results})
        held = repo.held_point_ids(s, ids=ids, job_id=job.id)  # points this job holds now (leased to it)
        recorded = dict(job.results or {})
        good: dict[int, dict[str, Any]] = {}
        bad: dict[int, str] = {}
        for r in results:
            recorded[str(r.point_id)] = r.status
            if r.point_id not in held:
                continue  # already given back (e.g. the task was cancelled); job.results keeps it idempotent
            held.discard(r.point_id)  # a second result for the same point in one call: the first counts
            loss, error = self.check(info, r)
            if error is None:
                good[r.point_id] = {
                    "pid": r.point_id,
                    "loss": loss,
                    "loss_value": loss[0] if isinstance(loss, list) else loss,
                    "metrics": r.metrics,
                }
            else:
                bad[r.point_id] = error
        if good:
            set_states(
                s,
                "point",
                PointState.evaluated,
                from_state=PointState.leased,
                rows=list(good.values()),
                values={
                    "loss": bindparam("loss"),
                    "loss_value": bindparam("loss_value"),
                    "metrics": bindparam("metrics"),
                    "error": None,
                },
            )
        if bad:
            task = self._task(s, job.task_id)
            for p in repo.points_by_id(s, ids=sorted(bad)):
                self.give_back(p, task, info, error=bad[p.id])
        job.results = recorded
        return set(good)

    @staticmethod
    def check(info: Any, r: PointResult) -> tuple[Any, str | None]:
        """(loss as stored, None) for a usable result, else (None, why the attempt failed)."""
        loss, problem = r.loss, None
        if r.status == 0:
            if loss is None:
                problem = "the evaluation reported status 0 but no loss"
            elif info.n_objectives == 1 and isinstance(loss, list):
                if len(loss) == 1:
                    loss = loss[0]
                else:
                    problem = f"the task has one objective but the loss is a list of {len(loss)}"
            elif info.n_objectives > 1 and (not isinstance(loss, list) or len(loss) != info.n_objectives):
                problem = f"the task has {info.n_objectives} objectives (directions) but the loss is {loss!r}"
        if r.status == 0 and problem is None:
            return loss, None
        return None, problem or (r.message or f"the evaluation exited with status {r.status}")

    def give_back(
        self,
        p: PointRow,
        task: TaskRow,
        info: Any,
        *,
        error: str,
        spend: bool = True,
        final: bool = False,
    ) -> None:
        """A leased point whose attempt ended without a result: ready again (an attempt spent) or
        failed when its attempts are used up; cancelled when its task has ended; ready without
        spending an attempt when its task is paused (the stop was ours): the rules of
        :mod:`phpo.server.orchestration.point_rules` decide."""
        set_state(
            p,
            PointState.failed,
            message=error,
            context=AttemptEnded(
                task_state=task.state,
                max_attempts=info.max_attempts,
                spend=spend,
                final=final,
                on_ready=self.mark_ready,
            ),
        )

    def release_job_points(
        self, s: Session, job: JobRow, task: TaskRow, *, error: str, final: bool = False
    ) -> None:
        info = self.info(s, job.task_id)
        for p in repo.leased_points_for_update(s, job=job):
            self.give_back(p, task, info, error=error, final=final)
