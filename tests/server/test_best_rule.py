"""One best-point rule (``repositories.points.best_point_id``) for the API, the CLI and the
MLflow bridge. The bridge used to order by the first objective alone (ties by point id): with
two objectives and a tie on the first, it tagged a dominated point ``phpo.best_in_segment`` while
``GET /tasks/{id}/best`` answered the Pareto point. In process, on a real SQLite database."""

from __future__ import annotations

from phpo.schemas.tasks import TaskSpec
from phpo.server.db.engine import Database, utcnow
from phpo.server.db.tables import PointRow, TaskRow
from phpo.server.repositories.points import best_point_id, best_points
from phpo.server.services.tasks import insert_task

from .helpers import spec


def _points(db: Database, directions: list[str] | None, losses: list) -> tuple[int, list[int]]:
    over = {"directions": directions} if directions else {}
    with db.write() as s:
        task = insert_task(s, "alice", TaskSpec.model_validate(spec(**over)))
        now = utcnow()
        rows = [
            PointRow(
                task_id=task.id,
                segment_idx=0,
                serial=i,
                params={"x": 0.1 * i},
                state="evaluated",
                attempts=0,
                intermediate=[],
                loss=loss,
                loss_value=loss[0] if isinstance(loss, list) else loss,
                created_at=now,
                updated_at=now,
                evaluated_at=now,
            )
            for i, loss in enumerate(losses)
        ]
        s.add_all(rows)
        s.flush()
        return task.id, [r.id for r in rows]


def test_multi_objective_tie_on_the_first_objective_picks_the_pareto_point(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'b.db'}")
    db.migrate()
    try:
        # the first two tie on objective 1; the first is dominated by the second
        tid, ids = _points(db, ["minimize", "minimize"], [[1.0, 5.0], [1.0, 2.0], [3.0, 1.0]])
        with db.read() as s:
            task = s.get(TaskRow, tid)
            api = best_points(s, task, 0)[0]
            assert best_point_id(s, task, 0) == api.point_id == ids[1]
            assert sorted(p.point_id for p in api.pareto) == [ids[1], ids[2]]
        tid, ids = _points(db, ["maximize"], [0.5, 0.9, 0.9])  # single objective: ties by serial
        with db.read() as s:
            assert best_point_id(s, s.get(TaskRow, tid), 0) == ids[1]
        tid, _ = _points(db, None, [])
        with db.read() as s:
            assert best_point_id(s, s.get(TaskRow, tid), 0) is None
    finally:
        db.dispose()
