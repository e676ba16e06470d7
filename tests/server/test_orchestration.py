"""set_state, set_states and the transition rules (server/orchestration), in process on a real
SQLite database: the rules decide what a failed attempt becomes, and an ended task or a finished
segment cancels its open work."""

from __future__ import annotations

import pytest
from phpo.schemas.states import JobState, MlflowSyncState, PointState, SegmentState, TaskState
from phpo.schemas.tasks import TaskSpec
from phpo.server.db.engine import Database, utcnow
from phpo.server.db.tables import JobRow, MlflowRunRow, PointRow, SegmentRow, TaskRow
from phpo.server.orchestration.point_rules import AttemptEnded
from phpo.server.orchestration.transitions import set_state, set_states
from phpo.server.services.tasks import insert_task
from sqlalchemy import select

from .helpers import spec


@pytest.fixture
def db(tmp_path):
    d = Database(f"sqlite:///{tmp_path / 'o.db'}")
    d.migrate()
    yield d
    d.dispose()


def _task(db: Database, n_points: int = 3, state: str = PointState.ready) -> tuple[int, list[int]]:
    with db.write() as s:
        task = insert_task(s, "alice", TaskSpec.model_validate(spec()))
        now = utcnow()
        rows = [
            PointRow(
                task_id=task.id,
                segment_idx=0,
                serial=i,
                params={"x": 0.1},
                state=state,
                attempts=0,
                intermediate=[],
                created_at=now,
                updated_at=now,
            )
            for i in range(n_points)
        ]
        s.add_all(rows)
        s.flush()
        return task.id, [r.id for r in rows]


@pytest.mark.parametrize(
    ("task_state", "attempts", "final", "want", "want_attempts", "want_error"),
    [
        (TaskState.running, 0, False, PointState.ready, 1, "boom"),  # RetryFailedPoints
        (TaskState.running, 2, False, PointState.failed, 3, "boom"),  # attempts used up (maxAttempts 3)
        (TaskState.running, 0, True, PointState.failed, 1, "boom"),  # final: never retried
        (
            TaskState.paused,
            0,
            False,
            PointState.ready,
            0,
            None,
        ),  # RequeuePointsOfPausedTask: no attempt spent
        (TaskState.cancelled, 0, False, PointState.cancelled, 0, "boom"),  # CancelPointsOfEndedTask
    ],
)
def test_failed_attempt_rules(db, task_state, attempts, final, want, want_attempts, want_error):
    _, (pid, *_) = _task(db, 1, PointState.leased)
    woken = []
    with db.write() as s:
        p = s.get(PointRow, pid)
        p.attempts, p.job_id = attempts, None
        d = set_state(
            p,
            PointState.failed,
            message="boom",
            context=AttemptEnded(
                task_state=task_state, max_attempts=3, final=final, on_ready=lambda: woken.append(1)
            ),
        )
    assert d.accepted and d.state == want
    with db.read() as s:
        p = s.get(PointRow, pid)
        assert (p.state, p.attempts, p.error) == (want, want_attempts, want_error)
    assert woken == ([1] if want == PointState.ready else [])


def test_a_lost_race_is_a_rejected_decision(db):
    _, (pid, *_) = _task(db, 1)
    with db.write() as s:
        s.add(
            MlflowRunRow(
                point_id=pid,
                task_id=1,
                experiment_id="0",
                run_id="r",
                synced=MlflowSyncState.done,
                updated_at=utcnow(),
            )
        )
    with db.write() as s:
        row = s.get(MlflowRunRow, pid)
        d = set_state(row, MlflowSyncState.done, expect={MlflowSyncState.open, MlflowSyncState.queued})
    assert not d.accepted and d.state == "done" and "not open/queued" in d.reason


def test_bulk_writes_refuse_transitions_with_rules(db):
    _, ids = _task(db, 2, PointState.leased)
    with db.write() as s, pytest.raises(TypeError, match="has rules"):
        set_states(s, "point", PointState.ready, from_state=PointState.leased, ids=ids)
    with db.write() as s:
        set_states(
            s, "point", PointState.evaluated, from_state=PointState.leased, ids=ids, values={"loss": 1.0}
        )
    with db.read() as s:
        rows = s.execute(select(PointRow).where(PointRow.id.in_(ids))).scalars().all()
        assert {(r.state, r.loss) for r in rows} == {("evaluated", 1.0)}
        assert all(r.evaluated_at is not None for r in rows)


def test_an_ended_task_cancels_its_open_work(db):
    tid, ids = _task(db, 2)
    with db.write() as s:
        s.add(
            JobRow(
                kind="steering",
                task_id=tid,
                segment_idx=0,
                state=JobState.queued,
                point_ids=[],
                results={},
                created_at=utcnow(),
            )
        )
    with db.write() as s:
        set_state(s.get(TaskRow, tid), TaskState.failed, message="x")
    with db.read() as s:
        points = s.execute(select(PointRow.state, PointRow.error).where(PointRow.task_id == tid)).all()
        jobs = s.execute(select(JobRow.state, JobRow.error).where(JobRow.task_id == tid)).all()
    assert set(points) == {("cancelled", "the task failed")}
    assert jobs == [("cancelled", "the task failed")]


def test_a_finished_segment_cancels_its_ready_points(db):
    tid, _ = _task(db, 2)
    with db.write() as s:
        seg = s.execute(select(SegmentRow).where(SegmentRow.task_id == tid)).scalar_one()
        assert set_state(seg, SegmentState.finished, message="maxPoints reached").accepted
    with db.read() as s:
        seg = s.execute(select(SegmentRow).where(SegmentRow.task_id == tid)).scalar_one()
        assert (seg.finished, seg.finished_reason) == (True, "maxPoints reached")
        points = set(s.execute(select(PointRow.state, PointRow.error).where(PointRow.task_id == tid)).all())
    assert points == {("cancelled", "segment finished: maxPoints reached")}
