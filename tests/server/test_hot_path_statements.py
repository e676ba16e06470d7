"""The broker's hot paths keep their SQL statement count: leasing a job of k points and
recording its k results are a fixed number of statements, whatever k (set-based writes through
``orchestration.set_states``, not one ORM round trip per point).

In process, on a real database (SQLite file and PostgreSQL): the broker is the server's own
class; statements are counted with a SQLAlchemy ``before_cursor_execute`` listener (an
``executemany`` counts once, as the database sees one statement)."""

from __future__ import annotations

import pytest
from phpo.schemas.api import Role
from phpo.schemas.jobs import AcquireRequest, CompleteRequest, PointResult
from phpo.schemas.tasks import TaskSpec
from phpo.server.auth.identity import Caller
from phpo.server.db.engine import Database, utcnow
from phpo.server.db.tables import PointRow
from phpo.server.services.job_broker import JobBroker
from phpo.server.services.tasks import insert_task
from phpo.server.settings import Settings
from sqlalchemy import event, select

from .helpers import spec

AGENT = Caller(name="agent", role=Role.agent)


class Counter:
    def __init__(self, db: Database):
        self.n = 0
        self.sql: list[str] = []
        event.listen(db.engine, "before_cursor_execute", self._on)

    def _on(self, conn, cursor, statement, parameters, context, executemany):
        self.n += 1
        self.sql.append(statement.split()[0])

    def reset(self) -> None:
        self.n, self.sql = 0, []


def _setup(url: str, tmp_path, k: int):
    db = Database(url)
    db.migrate()
    broker = JobBroker(db, Settings(data_dir=tmp_path, database_url=url))
    ts = TaskSpec.model_validate(spec(maxPoints=k, maxPointsPerEvaluationJob=k, nParallelEvaluation=k))
    with db.write() as s:
        task = insert_task(s, "alice", ts)
        now = utcnow()
        for i in range(k):
            s.add(
                PointRow(
                    task_id=task.id,
                    segment_idx=0,
                    serial=i,
                    params={"x": i / k},
                    state="ready",
                    attempts=0,
                    intermediate=[],
                    created_at=now,
                    updated_at=now,
                )
            )
    return db, broker, task.id


def _lease_and_report(url: str, tmp_path, k: int) -> tuple[int, int, list[str]]:
    db, broker, tid = _setup(url, tmp_path / f"k{k}", k)
    try:
        counter = Counter(db)
        job = broker.acquire(AGENT, AcquireRequest(agent="a1", site="local", kinds=["evaluation"]))
        assert job is not None and len(job.points) == k
        lease = counter.n
        counter.reset()
        ack = broker.complete(
            AGENT,
            job.id,
            CompleteRequest(
                results=[
                    PointResult(point_id=p.point_id, status=0, loss=float(i))
                    for i, p in enumerate(job.points)
                ]
            ),
        )
        assert ack.state == "succeeded"
        report = counter.n
        with db.read() as s:
            states = set(s.execute(select(PointRow.state).where(PointRow.task_id == tid)).scalars())
        assert states == {"evaluated"}
        return lease, report, counter.sql
    finally:
        db.dispose()


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_lease_and_report_statement_count(db_url, tmp_path):
    lease1, report1, _ = _lease_and_report(db_url, tmp_path, 1)
    lease, report, sql = _lease_and_report(db_url if db_url.startswith("sqlite") else db_url, tmp_path, 50)
    print(f"lease: {lease1} / {lease} statements, report: {report1} / {report} ({sql})")
    assert (lease, report) == (lease1, report1), "a job of 50 points must cost what a job of 1 costs"
    assert (lease, report) == EXPECTED[db_url.split(":")[0].split("+")[0]]


EXPECTED = {"sqlite": (9, 8), "postgresql": (7, 7)}
