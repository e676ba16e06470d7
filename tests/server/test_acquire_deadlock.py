"""PostgreSQL: an acquire that deadlocks with another transaction locking segments in the other
order is answered "no job" (the agent asks again), never a 500 with a traceback.

Found by the three-replica load test (tests/server/test_replicas.py): two replicas' acquires
locked the segments of two tasks in different orders and PostgreSQL aborted one with
``deadlock detected``, which reached the agent as a server error. Here the other side of the
deadlock is this test's own transaction. PostgreSQL checks a waiting transaction for a deadlock
once, ``deadlock_timeout`` after it began to wait: the server's sessions get 8 s (set on the
test's database), this transaction 60 s, so the acquire (which waits first) finds the cycle
that this transaction closes a moment later and is the victim every time."""

from __future__ import annotations

import threading
import time

import psycopg

from .helpers import acquire, create_task, points, wait_until


def test_an_acquire_that_deadlocks_is_answered_no_job(pg_db, start_server):
    dsn = pg_db.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE \"{dsn.rsplit('/', 1)[1]}\" SET deadlock_timeout = '8s'")
    srv = start_server(pg_db)
    with srv.client() as c:
        a = create_task(c, maxPoints=2, nParallelEvaluation=1)["id"]
        b = create_task(c, maxPoints=2, nParallelEvaluation=1)["id"]
        for tid in (a, b):
            wait_until(lambda tid=tid: points(c, tid, state="ready"), 60, what=f"ready points of task {tid}")
    with psycopg.connect(dsn) as conn:
        seg_a, seg_b = (
            conn.execute("SELECT id FROM segments WHERE task_id = %s", (t,)).fetchone()[0] for t in (a, b)
        )
        # this transaction holds task A's ready points (the acquire skips them: A gives no job, but
        # the acquire keeps A's segment locked) and task B's segment, which the acquire then waits for
        conn.execute("SET deadlock_timeout = '60s'")
        conn.execute("SELECT id FROM points WHERE task_id = %s AND state = 'ready' FOR UPDATE", (a,))
        conn.execute("SELECT id FROM segments WHERE id = %s FOR UPDATE", (seg_b,))
        got: dict = {}

        def ask() -> None:
            with srv.client(srv.agent_token) as ag:
                r = ag.post("/jobs/acquire", json={"agent": "a", "site": "local", "wait_s": 0})
                got["status"], got["text"] = r.status_code, r.text

        th = threading.Thread(target=ask)
        th.start()
        with psycopg.connect(dsn, autocommit=True) as watch:  # a fresh statistics snapshot per query
            wait_until(
                lambda: (
                    watch.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%segments%'"
                    ).fetchone()[0]
                    > 0
                ),
                60,
                what="the acquire to wait for task B's segment",
            )
        t0 = time.monotonic()
        conn.execute("SELECT id FROM segments WHERE id = %s FOR UPDATE", (seg_a,))  # closes the cycle
        th.join(timeout=60)
        assert time.monotonic() - t0 < 50, "the acquire, not this transaction, should have been the victim"
        conn.rollback()
    assert "status" in got, srv.log()[-3000:]
    assert got["status"] in (200, 204), got  # before the fix: 500 (deadlock detected)
    with srv.client(srv.agent_token) as ag:
        job = acquire(ag, agent="b", wait_s=0)  # and the next ask gets a job
    assert job is not None, "no job after the lock race"
    assert "Traceback" not in srv.log(), srv.log()[-3000:]
    assert "lost a lock race (DeadlockDetected)" in srv.log()
