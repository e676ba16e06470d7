"""Several real ``phpo server`` processes on one real PostgreSQL, as behind a Kubernetes Service:
agents spread over the replicas, under load. Checked straight in the database: no point is leased
twice, no two steering iterations of one segment overlap, one HPO manager at a time; kill -9 of
the manager's replica hands the manager to another within the lease time; a rolling restart (one
replica after the other) loses nothing.

``PHPO_REPLICA_LOAD=N`` multiplies the load (``make test-replicas`` runs N=5).
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from datetime import timedelta

import httpx
import psycopg
import pytest

from .helpers import TinyAgent, create_task, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

LOCK_KEY = 7263542  # phpo.server.services.hpo.leader.MANAGER_LOCK_KEY
LOAD = max(1, int(os.environ.get("PHPO_REPLICA_LOAD", "1")))
LEADER_LOG = "this server runs the HPO manager"


def _dsn(server) -> str:
    return server.database_url.replace("postgresql+psycopg://", "postgresql://")


def _q(dsn: str, sql: str, *params):
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def _lock_holders(dsn: str) -> int:
    return _q(
        dsn,
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.objid = %s "
        "AND d.datname = current_database()",
        LOCK_KEY,
    )[0][0]


def _leader(servers) -> object | None:
    """The replica whose log says it took the manager's lock (None while none has)."""
    leaders = [s for s in servers if s.proc.poll() is None and LEADER_LOG in s.log()]
    return leaders[-1] if leaders else None


class LongPollAgent(TinyAgent):
    """TinyAgent with long polls (``wait_s``): it depends on being woken by its own replica."""

    def _post(self, path: str, body: dict) -> httpx.Response | None:
        if path == "/jobs/acquire":
            body = {**body, "wait_s": 5}
        return super()._post(path, body)


class Sampler(threading.Thread):
    """Reads, while the load runs, how many sessions hold the manager's lock and the ready + leased
    points per task (two managers steering one task would exceed its parallelism)."""

    def __init__(self, dsn: str):
        super().__init__(daemon=True)
        self.dsn, self.stop = dsn, threading.Event()
        self.holders: list[int] = []
        self.in_flight: Counter = Counter()  # task -> most points in flight seen

    def run(self) -> None:
        while not self.stop.is_set():
            self.holders.append(_lock_holders(self.dsn))
            for tid, n in _q(
                self.dsn,
                "SELECT task_id, count(*) FROM points WHERE state IN ('ready', 'leased') GROUP BY task_id",
            ):
                self.in_flight[tid] = max(self.in_flight[tid], n)
            self.stop.wait(0.1)


def _run_load(
    servers,
    n_tasks: int,
    max_points: int,
    parallel: int,
    agents_per_replica: int = 2,
    during=None,
    delay: float = 0.0,
) -> dict:
    """Submit tasks through the replicas in turn, run agents on every replica until every task
    ended (``during(servers)`` runs meanwhile), then check the database."""
    dsn = _dsn(servers[0])
    sampler = Sampler(dsn)
    sampler.start()
    agents = [
        LongPollAgent(s.url, s.agent_token, name=f"agent-{i}-{j}", delay=delay)
        for i, s in enumerate(servers)
        for j in range(agents_per_replica)
    ]
    for a in agents:
        a.start()
    tids = []
    for i in range(n_tasks):
        with servers[i % len(servers)].client() as c:
            tids.append(
                create_task(
                    c,
                    maxPoints=max_points,
                    nParallelEvaluation=parallel,
                    nPointsPerIteration=parallel,
                    optimizer="random",
                )["id"]
            )
    done_during = None
    try:
        if during is not None:
            during(servers)
            done_during = sum(len(a.evaluated) for a in agents)
        wait_until(
            lambda: all(
                r[0] in ("finished", "failed")
                for r in _q(dsn, "SELECT state FROM tasks WHERE id = ANY(%s)", tids)
            ),
            timeout=120 * LOAD,
            interval=0.2,
            what="every task to end",
        )
    finally:
        for a in agents:
            a.halt()
        sampler.stop.set()
        sampler.join()
    states = dict(_q(dsn, "SELECT id, state FROM tasks WHERE id = ANY(%s)", tids))
    assert set(states.values()) == {"finished"}, states
    evaluated = [pid for a in agents for pid in a.evaluated]
    if during is not None:  # the load went on after what ``during`` did
        assert done_during < len(evaluated), f"all {len(evaluated)} points were evaluated before it ended"
    return {"tids": tids, "evaluated": evaluated, "sampler": sampler, "agents": agents, "dsn": dsn}


def _check_database(dsn: str, tids: list[int], max_points: int) -> None:
    # every point of every task evaluated once, none beyond maxPoints, none failed
    rows = _q(
        dsn,
        "SELECT task_id, state, count(*) FROM points WHERE task_id = ANY(%s) GROUP BY task_id, state",
        tids,
    )
    assert {(t, st): n for t, st, n in rows} == {(t, "evaluated"): max_points for t in tids}, rows
    # no point in two evaluation jobs: each point was leased once
    leased = Counter(
        pid
        for (ids,) in _q(
            dsn, "SELECT point_ids FROM jobs WHERE kind = 'evaluation' AND task_id = ANY(%s)", tids
        )
        for pid in ids
    )
    assert len(leased) == max_points * len(tids)
    assert max(leased.values()) == 1, [p for p, n in leased.items() if n > 1]
    # no duplicate steering iteration: the iterations of a segment never overlap in time, and
    # together they produced exactly the task's points
    its = _q(
        dsn,
        "SELECT task_id, segment_idx, started_at, duration_s, produced FROM steering_iterations "
        "WHERE task_id = ANY(%s) AND error IS NULL ORDER BY task_id, segment_idx, started_at",
        tids,
    )
    produced: Counter = Counter()
    last_end: dict = {}
    for tid, seg, started, duration, n in its:
        key = (tid, seg)
        if key in last_end:
            assert started >= last_end[key], f"two steering iterations of task {tid} segment {seg} overlap"
        last_end[key] = started + timedelta(seconds=duration or 0)
        produced[tid] += n
    assert produced == {t: max_points for t in tids}, produced


def test_an_agent_waiting_on_a_replica_that_is_not_the_manager_is_woken(start_replicas):
    """Bug (found here): each replica woke only its own long-polling agents; the manager's new
    points never woke an agent waiting on another replica, which slept out its whole ``wait_s``.
    PostgreSQL LISTEN/NOTIFY carries the wake-up now. The one clock check: woken well before the
    20 s wait would have run out by itself."""
    a, b = start_replicas(2, "--manager-interval", "0.2")
    wait_until(lambda: _leader([a, b]) is a, what="replica A to run the manager")
    out: dict = {}
    agent_token, user_token = b.agent_token, a.user_token  # made now: a token costs a process

    def poll() -> None:
        with b.client(agent_token) as c:
            t0 = time.monotonic()
            r = c.post(
                "/jobs/acquire",
                json={"agent": "waiter", "site": "local", "kinds": ["evaluation"], "wait_s": 20},
            )
        out["status"], out["elapsed"] = r.status_code, time.monotonic() - t0

    t = threading.Thread(target=poll)
    t.start()
    time.sleep(1.5)  # the agent is waiting on B
    with a.client(user_token) as c:
        create_task(c, maxPoints=4, nParallelEvaluation=2, nPointsPerIteration=2)
    t.join(timeout=40)
    assert out["status"] == 200
    assert out["elapsed"] < 10, f"the agent on replica B waited {out['elapsed']:.1f} s: it was never woken"


def test_three_replicas_under_load_lease_each_point_once_with_one_manager(start_replicas):
    servers = start_replicas(3, "--manager-interval", "0.2")
    n_tasks, max_points, parallel = 4 * LOAD, 20, 3
    res = _run_load(servers, n_tasks, max_points, parallel)
    _check_database(res["dsn"], res["tids"], max_points)
    assert (
        sorted(Counter(res["evaluated"]).values())[-1] == 1 and len(res["evaluated"]) == n_tasks * max_points
    )
    s = res["sampler"]
    assert s.holders and max(s.holders) == 1, "more than one session held the manager's lock"
    over = {t: n for t, n in s.in_flight.items() if n > parallel}
    assert not over, f"tasks with more than {parallel} points in flight (two managers steered): {over}"
    assert [LEADER_LOG in x.log() for x in servers] == [True, False, False]  # no handover without a failure
    # the agents were spread: each replica's agents evaluated points
    by_replica = Counter(a.agent.split("-")[1] for a in res["agents"] for _ in a.evaluated)
    assert set(by_replica) == {"0", "1", "2"}, by_replica
    print(
        f"\nreplicas: 3, tasks {n_tasks} x {max_points} points, evaluated per replica {dict(by_replica)}, "
        f"lock samples {len(s.holders)}"
    )


def test_kill9_of_the_manager_replica_hands_the_manager_over_within_the_lease(start_replicas):
    lease = 8.0
    a, b, c = start_replicas(3, "--manager-interval", "0.2", "--lease-seconds", str(lease))
    wait_until(lambda: _leader([a, b, c]) is a, what="replica A to run the manager")
    handover: dict = {}

    def crash(servers) -> None:
        time.sleep(1.0)  # points are being evaluated on every replica
        t0 = time.monotonic()
        a.kill()
        new = wait_until(
            lambda: _leader([b, c]),
            timeout=lease,
            interval=0.05,
            what=f"a replica to take the manager within the lease ({lease} s)",
        )
        handover["s"], handover["to"] = time.monotonic() - t0, new

    res = _run_load([a, b, c], 2 * LOAD, 60, 3, during=crash, delay=0.2)
    _check_points_after_crash(res["dsn"], res["tids"], 60)
    assert max(res["sampler"].holders) == 1
    print(f"\nmanager handed over {handover['s']:.2f} s after kill -9 (lease {lease} s)")


def _check_points_after_crash(dsn: str, tids: list[int], max_points: int) -> None:
    """After a crash a point leased through the dead replica may be lost and evaluated again (its
    lease expired; that attempt counts), but every point ends evaluated and none is failed."""
    rows = _q(dsn, "SELECT state, count(*) FROM points WHERE task_id = ANY(%s) GROUP BY state", tids)
    assert dict(rows) == {"evaluated": max_points * len(tids)}, rows


def test_a_rolling_restart_loses_nothing(start_replicas):
    a, b = start_replicas(2, "--manager-interval", "0.2")
    restarted = []

    def rolling(servers) -> None:
        for s in servers:  # one replica after the other, as a Deployment's rolling update does
            time.sleep(1.0)
            s.restart()
            restarted.append(s.port)

    n_tasks, max_points = 2 * LOAD, 80
    res = _run_load([a, b], n_tasks, max_points, 3, during=rolling, delay=0.25)
    assert restarted == [a.port, b.port]
    _check_database(res["dsn"], res["tids"], max_points)
    attempts = _q(
        res["dsn"], "SELECT count(*) FROM points WHERE task_id = ANY(%s) AND attempts > 0", res["tids"]
    )
    assert attempts == [(0,)], "a point lost an attempt during the rolling restart"
    assert len(res["evaluated"]) == n_tasks * max_points and max(Counter(res["evaluated"]).values()) == 1


def test_replica_signal_carries_wakeups_to_the_others_only(pg_db):
    """Two ReplicaSignals on one database (as two replicas hold them): a wake published by one
    reaches the other, never itself; a malformed message on the channel changes nothing."""
    from phpo.server.services.replica_signal import CHANNEL, ReplicaSignal

    got: dict[str, list] = {"a": [], "b": []}
    sigs = {
        k: ReplicaSignal(
            pg_db,
            on_ready=lambda n, k=k: got[k].append(("ready", n)),
            on_steer=lambda segs, k=k: got[k].append(("steer", segs)),
        )
        for k in got
    }
    for s in sigs.values():
        s.start()
    try:
        for s in sigs.values():
            assert s.listening.wait(30)
        wait_until(lambda: all(len(v) >= 2 for v in got.values()), what="the wake-up of each (re)connect")
        got["a"].clear()
        got["b"].clear()
        _q(
            pg_db.replace("postgresql+psycopg://", "postgresql://"),
            "SELECT pg_notify(%s, %s)",
            CHANNEL,
            "someone ready lots",
        )  # malformed: ignored, and the listener goes on
        sigs["a"].publish_ready(3)
        sigs["a"].publish_steer([(7, 0), (7, 1)])
        sigs["b"].publish_steer(None)
        wait_until(lambda: len(got["b"]) == 2 and len(got["a"]) == 1, what="the messages")
        assert got["b"] == [("ready", 3), ("steer", [(7, 0), (7, 1)])]
        assert got["a"] == [("steer", None)]
    finally:
        for s in sigs.values():
            s.stop()
