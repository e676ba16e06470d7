"""Two real servers on one PostgreSQL: only the holder of the manager's advisory lock steers. When
only the leader's lock connection dies (``pg_terminate_backend``), the old leader must notice and
step down, or two managers steer the same tasks and hand out points beyond their parallelism."""

from __future__ import annotations

import time

import httpx
import psycopg
import pytest

from .helpers import create_task, wait_until

LOCK_KEY = 7263542  # phpo.server.services.hpo.leader.MANAGER_LOCK_KEY
N_TASKS, PARALLEL = 10, 4


def _pg_dsn(db_url: str) -> str:
    return db_url.replace("postgresql+psycopg://", "postgresql://")


def _lock_holder(dsn: str) -> int | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objid = %s "
            "AND d.datname = current_database()",
            (LOCK_KEY,),
        ).fetchone()
        return row[0] if row else None


def _in_flight(dsn: str) -> dict[int, int]:
    """Ready + leased points per task, read straight from the database."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT task_id, count(*) FROM points WHERE state IN ('ready', 'leased') GROUP BY task_id"
        ).fetchall()
    return dict(rows)


def _evaluate(c: httpx.Client, n: int) -> None:
    """Lease ``n`` points (one per job) and report them: the tasks' parallelism frees up at once."""
    for _ in range(n):
        r = c.post("/jobs/acquire", json={"agent": "drain", "site": "local", "kinds": ["evaluation"]})
        if r.status_code == 204:
            return
        assert r.status_code == 200, r.text
        job = r.json()
        results = [{"point_id": p["point_id"], "loss": 0.5} for p in job["points"]]
        assert c.post(f"/jobs/{job['id']}/complete", json={"results": results}).status_code == 200


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # the advisory lock is PostgreSQL's
def test_leader_steps_down_when_only_its_lock_connection_is_killed(db_url, start_server):
    dsn = _pg_dsn(db_url)
    a = start_server(db_url, "--manager-interval", "0.1")
    wait_until(lambda: _lock_holder(dsn), what="server A to take the manager's lock")
    b = start_server(db_url, "--manager-interval", "0.1")
    with a.client() as c:
        tids = [
            create_task(
                c,
                maxPoints=1000,
                nParallelEvaluation=PARALLEL,
                nPointsPerIteration=PARALLEL,
                optimizer="random",
            )["id"]
            for _ in range(N_TASKS)
        ]
    wait_until(lambda: sum(_in_flight(dsn).values()) == N_TASKS * PARALLEL, what="the first points")
    old = _lock_holder(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT pg_terminate_backend(%s)", (old,)).fetchone()[0]
    # a replica (B, or A again on a new connection) holds the lock again
    new = wait_until(
        lambda: (p := _lock_holder(dsn)) not in (None, old) and p,
        timeout=20,
        what="a new holder of the manager's lock",
    )
    assert new != old
    worst: dict[int, int] = {}
    with httpx.Client(
        base_url=b.url + "/api/v1", headers={"Authorization": f"Bearer {b.agent_token}"}, timeout=30
    ) as agent:
        for _ in range(3):  # free every task's parallelism, three times over
            _evaluate(agent, N_TASKS * PARALLEL)
            time.sleep(1.0)  # both managers (if two still steered) run 10 passes meanwhile
            for tid, n in _in_flight(dsn).items():
                worst[tid] = max(worst.get(tid, 0), n)
    over = {tid: n for tid, n in worst.items() if n > PARALLEL}
    assert not over, f"tasks with more than {PARALLEL} points in flight (two managers steered): {over}"
    assert set(worst) == set(tids) and min(worst.values()) == PARALLEL
    logs = a.log() + b.log()
    assert "lost the HPO manager's advisory lock" in a.log(), logs[-4000:]
