"""The HPO manager on a real server: refill, budgets, exhaustion, restart after kill -9,
failing steering, and external steering driven through steering jobs.

The agent side is played by small HTTP loops in the test (the real agent is tested in
tests/agent); for external steering the test computes %OUT itself, as the agent's steering
runner would after running the command."""

from __future__ import annotations

import time

from .helpers import TinyAgent, acquire, create_task, points, spec, task, wait_until


def _in_flight(c, tid) -> int:
    n = task(c, tid)["counts"]
    return n["ready"] + n["leased"]


def test_refill_keeps_n_parallel_in_flight(db_url, start_server):
    srv = start_server(db_url)
    with srv.client() as c, srv.client(srv.agent_token) as a:
        tid = create_task(c, maxPoints=8, nParallelEvaluation=3, nPointsPerIteration=2)["id"]
        wait_until(lambda: _in_flight(c, tid) == 3, what="3 points in flight")
        time.sleep(0.5)
        assert _in_flight(c, tid) == 3  # never more than nParallelEvaluation
        jobs = [acquire(a) for _ in range(3)]
        assert acquire(a) is None
        for j in jobs[:2]:
            pid = j["points"][0]["point_id"]
            a.post(f"/jobs/{j['id']}/points/{pid}/result", json={"point_id": pid, "loss": 0.5})
            a.post(f"/jobs/{j['id']}/complete", json={})
            # the manager refills: again 3 waiting or running
            wait_until(lambda: _in_flight(c, tid) == 3, what="refill to 3")
        assert task(c, tid)["counts"]["evaluated"] == 2
        agent = TinyAgent(srv.url, srv.agent_token)
        agent.start()
        try:
            wait_until(
                lambda: task(c, tid)["counts"]["ready"] == 0 and _in_flight(c, tid) <= 1,
                timeout=30,
                what="agent drained",
            )
            pid = jobs[2]["points"][0]["point_id"]
            a.post(f"/jobs/{jobs[2]['id']}/points/{pid}/result", json={"point_id": pid, "loss": 0.1})
            a.post(f"/jobs/{jobs[2]['id']}/complete", json={})
            t = wait_until(lambda: (x := task(c, tid))["state"] == "finished" and x, what="task finished")
        finally:
            agent.halt()
        assert t["counts"]["evaluated"] == 8 and "maxPoints (8)" in t["message"]
        pts = points(c, tid)
        assert sorted(p["serial"] for p in pts) == list(range(8))  # exactly the budget, never beyond
        assert t["best_loss"] == min(p["loss"] for p in pts)
        its = c.get(f"/tasks/{tid}/iterations").json()["items"]
        assert all(i["requested"] <= 2 for i in its)  # nPointsPerIteration


def test_budgets_and_exhaustion_end_the_task(db_url, start_server):
    srv = start_server(db_url)
    with srv.client() as c:
        # maxEvaluationJobs: 3 jobs, then the segment ends and the leftover ready point is cancelled
        t_jobs = create_task(c, maxPoints=10, nParallelEvaluation=2, maxEvaluationJobs=3)["id"]
        # grid over 3 values: the optimizer runs out before maxPoints
        t_grid = create_task(
            c,
            maxPoints=10,
            nParallelEvaluation=2,
            optimizer="grid",
            searchSpace={
                "act": {"method": "categorical", "dimension": {"categories": ["relu", "tanh", "gelu"]}}
            },
        )["id"]
        # explicit minUnevaluatedPoints=0 (upstream): a new iteration only when nothing is waiting
        t_min = create_task(
            c, maxPoints=4, nParallelEvaluation=4, nPointsPerIteration=2, minUnevaluatedPoints=0
        )["id"]
        wait_until(lambda: _in_flight(c, t_min) == 2, what="first iteration")
        time.sleep(0.5)
        assert _in_flight(c, t_min) == 2  # not refilled to nParallelEvaluation
        agent = TinyAgent(srv.url, srv.agent_token)
        agent.start()
        try:
            states = wait_until(
                lambda: (
                    (s := [task(c, t) for t in (t_jobs, t_grid, t_min)])
                    and all(x["state"] == "finished" for x in s)
                    and s
                ),
                timeout=60,
                what="all tasks finished",
            )
        finally:
            agent.halt()
        tj, tg, tm = states
        assert tj["counts"]["jobs"] == 3 and tj["counts"]["evaluated"] == 3
        assert "maxEvaluationJobs (3)" in tj["message"]
        assert tj["counts"]["ready"] == 0 and tj["counts"]["leased"] == 0
        assert tg["counts"]["evaluated"] == 3 and "exhausted" in tg["message"]
        assert sorted(p["params"]["act"] for p in points(c, t_grid)) == ["gelu", "relu", "tanh"]
        assert tm["counts"]["evaluated"] == 4


def test_restart_after_kill_continues_without_duplicates(db_url, start_server):
    srv = start_server(db_url, "--lease-seconds", "3", "--reaper-interval", "0.5")
    n = 24
    with srv.client() as c:
        tid = create_task(
            c,
            maxPoints=n,
            nParallelEvaluation=4,
            nPointsPerIteration=2,
            optimizer="optuna.tpe",
            optimizerOptions={"n_startup_trials": 5},
            searchSpace={
                "x": [-2.0, 2.0],
                "y": {"method": "uniformint", "dimension": {"low": 0, "high": 1000}},
            },
        )["id"]
    agent = TinyAgent(
        srv.url, srv.agent_token, loss_fn=lambda p: (p["x"] - 0.3) ** 2 + p["y"] / 1000, delay=0.05
    )
    agent.start()
    try:
        with srv.client() as c:
            wait_until(lambda: task(c, tid)["counts"]["evaluated"] >= 8, timeout=60, what="8 evaluated")
        srv.kill()  # kill -9 in the middle of the task
        time.sleep(0.5)
        srv.start()
        with srv.client() as c:
            t = wait_until(
                lambda: (x := task(c, tid))["state"] != "running" and x,
                timeout=90,
                what="task done after restart",
            )
    finally:
        agent.halt()
    assert t["state"] == "finished", t
    with srv.client() as c:
        pts = points(c, tid)
    assert sorted(p["serial"] for p in pts) == list(range(n)), "lost or duplicated serials"
    seen: dict = {}
    for p in pts:
        seen.setdefault((p["params"]["x"], p["params"]["y"]), []).append(p["serial"])
    assert all(len(v) == 1 for v in seen.values()), (
        f"repeated points (serials): {[v for v in seen.values() if len(v) > 1]}"
    )
    assert all(p["state"] == "evaluated" for p in pts)
    assert len(agent.evaluated) == len(set(agent.evaluated)) == n  # each point's result taken once
    assert "Traceback" not in srv.log()


def test_failing_optimizer_fails_the_task_after_three_tries(tmp_path, monkeypatch):
    """In-process (no HTTP): the manager with an optimizer whose ask always raises. The broken
    optimizer is the one stand-in here: no real plugin fails on purpose."""
    from phpo.schemas.api import Role
    from phpo.schemas.tasks import TaskSpec
    from phpo.server.auth.identity import Caller
    from phpo.server.db.engine import Database
    from phpo.server.services.hpo import HpoManager
    from phpo.server.services.tasks import TaskService
    from phpo.server.settings import Settings
    from phpo.steering import registry
    from phpo.steering.simple import RandomSearch

    class Broken(RandomSearch):
        def ask(self, n, pending=()):
            raise RuntimeError("the optimizer broke")

    settings = Settings(data_dir=tmp_path)
    db = Database(settings.effective_database_url)
    db.migrate()
    mgr = HpoManager(db, settings)
    tid = TaskService(db).create(Caller("alice", Role.user), TaskSpec.model_validate(spec())).id
    monkeypatch.setattr(registry, "create_optimizer", lambda name, config: Broken(config))
    try:
        for _ in range(3):
            mgr.run_once()
            wait_until(lambda: not mgr.iterations.in_flight(), what="iteration done")
        with db.read() as s:
            from phpo.server.repositories.iterations import list_iterations
            from phpo.server.repositories.tasks import get_task_row

            t = get_task_row(s, tid)
            its, _ = list_iterations(s, tid, limit=10, offset=0)
            assert t.state == "failed" and "steering failed 3 times" in t.message
            assert "the optimizer broke" in t.message
            assert len(its) == 3 and all("the optimizer broke" in i.error for i in its)
        mgr.run_once()  # a failed task is left alone
        with db.read() as s:
            assert len(list_iterations(s, tid, limit=10, offset=0)[0]) == 3
    finally:
        mgr.stop()
        db.dispose()


def _steering_job(a):
    return acquire(a, kinds=["steering"])


def test_external_steering_via_steering_jobs(db_url, start_server):
    srv = start_server(db_url)
    space = {"lr": {"method": "loguniform", "dimension": {"low": 1e-4, "high": 1e-1}}}
    with srv.client() as c, srv.client(srv.agent_token) as a:
        # minUnevaluatedPoints=1: an iteration as soon as one point is left (upstream's default 0
        # waits for every point: test_steering_command_waits_for_every_point_by_default)
        tid = create_task(
            c,
            optimizer=None,
            steeringExec="python steer.py %IN %OUT %NUM_POINTS",
            searchSpace=space,
            maxPoints=3,
            nParallelEvaluation=2,
            minUnevaluatedPoints=1,
        )["id"]
        assert acquire(a, kinds=["evaluation"]) is None  # no point before the steering ran
        sj = wait_until(lambda: _steering_job(a), what="a steering job")
        st = sj["steering"]
        assert sj["kind"] == "steering" and st["exec"].startswith("python steer.py")
        assert st["input"] == {"points": [], "opt_space": space}  # the user's space verbatim
        assert st["num_points"] == 2 and st["max_points"] == 3
        assert _steering_job(a) is None  # leased once
        r = a.post(f"/jobs/{sj['id']}/complete", json={"steering_output": [{"lr": 0.01}, {"lr": 0.001}]})
        assert r.status_code == 200
        assert sorted(p["params"]["lr"] for p in points(c, tid)) == [0.001, 0.01]

        # evaluate one (loss 0.0); the next steering job's input lists the other point as not
        # evaluated (null)
        def evaluate(loss):
            j = acquire(a, kinds=["evaluation"])
            pid = j["points"][0]["point_id"]
            a.post(f"/jobs/{j['id']}/points/{pid}/result", json={"point_id": pid, "loss": loss})
            a.post(f"/jobs/{j['id']}/complete", json={})

        evaluate(0.0)
        sj = wait_until(lambda: _steering_job(a), what="second steering job")
        losses = [x[1] for x in sj["steering"]["input"]["points"]]
        assert sorted(losses, key=lambda v: (v is None, v)) == [0.0, None]
        evaluate(0.25)
        # a point outside the space is a failed iteration, nothing stored
        a.post(f"/jobs/{sj['id']}/complete", json={"steering_output": [{"lr": 5.0}]})
        its = c.get(f"/tasks/{tid}/iterations").json()["items"]
        assert "does not fit" in (its[1]["error"] or "") and len(points(c, tid)) == 2
        sj = wait_until(lambda: _steering_job(a), what="third steering job")
        assert sorted(x[1] for x in sj["steering"]["input"]["points"]) == [0.0, 0.25]
        # the empty list ends the search
        a.post(f"/jobs/{sj['id']}/complete", json={"steering_output": []})
        t = wait_until(lambda: (x := task(c, tid))["state"] == "finished" and x, what="finished")
        assert "no points" in t["message"]

        # a crashing steering command fails the task after 3 tries, with its stderr in the message
        tid2 = create_task(c, optimizer=None, steeringExec="python steer.py %IN %OUT", searchSpace=space)[
            "id"
        ]
        for i in range(3):
            sj = wait_until(lambda: _steering_job(a), what=f"steering try {i + 1}")
            a.post(f"/jobs/{sj['id']}/fail", json={"error": f"Traceback ...\nZeroDivisionError: try {i + 1}"})
        t = wait_until(lambda: (x := task(c, tid2))["state"] == "failed" and x, what="failed")
        assert "ZeroDivisionError: try 3" in t["message"]


def test_external_steering_segmented(db_url, start_server):
    srv = start_server(db_url)
    with srv.client() as c, srv.client(srv.agent_token) as a:
        tid = create_task(
            c,
            optimizer=None,
            steeringExec="python steer.py %IN %OUT",
            maxPoints=1,
            searchSpace={"x": [0.0, 1.0]},
            segments=[{"name": "a"}, {"name": "b"}],
        )["id"]
        sj = wait_until(lambda: _steering_job(a), what="a steering job")
        inp = sj["steering"]["input"]
        assert sj["steering"]["max_points"] == 2  # %MAX_POINTS: the whole task's (maxPoints x segments)
        assert inp["opt_space"] == [
            {"model_id": 0, "search_space": {"x": [0.0, 1.0]}},
            {"model_id": 1, "search_space": {"x": [0.0, 1.0]}},
        ]
        a.post(f"/jobs/{sj['id']}/complete", json={"steering_output": [[0, {"x": 0.1}], [1, {"x": 0.9}]]})
        pts = points(c, tid)
        assert sorted((p["segment_id"], p["params"]["x"]) for p in pts) == [(0, 0.1), (1, 0.9)]
        for _ in range(2):
            j = acquire(a, kinds=["evaluation"])
            pid = j["points"][0]["point_id"]
            a.post(f"/jobs/{j['id']}/points/{pid}/result", json={"point_id": pid, "loss": 1.0})
            a.post(f"/jobs/{j['id']}/complete", json={})
        wait_until(lambda: task(c, tid)["state"] == "finished", what="finished")


def test_steering_command_waits_for_every_point_by_default(db_url, start_server):
    """Upstream's minUnevaluatedPoints is 0: a steering command runs again only when no point is
    waiting or running, and a point that failed every attempt is handed to it with iDDS's loss
    (1e5), never as null. Steering tools that subtract the pending (null) points from %NUM_POINTS
    (hpogrid does) answer [] otherwise, which ends the search early and silently."""
    srv = start_server(db_url)
    with srv.client() as c, srv.client(srv.agent_token) as a:
        tid = create_task(
            c,
            optimizer=None,
            steeringExec="python steer.py %IN %OUT",
            maxPoints=4,
            nParallelEvaluation=2,
            nPointsPerIteration=2,
            maxAttempts=1,
            searchSpace={"x": [0.0, 1.0]},
        )["id"]
        sj = wait_until(lambda: _steering_job(a), what="a steering job")
        a.post(f"/jobs/{sj['id']}/complete", json={"steering_output": [{"x": 0.1}, {"x": 0.2}]})
        j = wait_until(lambda: acquire(a, kinds=["evaluation"]), what="an evaluation job")
        pid = j["points"][0]["point_id"]
        a.post(f"/jobs/{j['id']}/points/{pid}/result", json={"point_id": pid, "loss": 0.0})
        a.post(f"/jobs/{j['id']}/complete", json={})
        time.sleep(1.5)  # several manager passes: one point still waits, so no steering job
        assert _steering_job(a) is None
        j = acquire(a, kinds=["evaluation"])
        pid = j["points"][0]["point_id"]
        a.post(f"/jobs/{j['id']}/points/{pid}/result", json={"point_id": pid, "status": 1, "message": "boom"})
        a.post(f"/jobs/{j['id']}/complete", json={})
        sj = wait_until(lambda: _steering_job(a), what="the second steering job")
        assert sj["steering"]["num_points"] == 2
        pts = sj["steering"]["input"]["points"]
        assert sorted(loss for _, loss in pts) == [0.0, 100000.0]  # the failed point: iDDS's 1e5
        failed = [p for p in points(c, tid) if p["state"] == "failed"]
        assert len(failed) == 1 and failed[0]["loss"] is None  # no made-up loss on the point itself


def test_partial_pass_steers_only_the_segments_it_was_woken_for(tmp_path):
    """In-process: a result wakes the manager for its own (task, segment), and that pass reads
    and steers only that segment (a full pass per result made server CPU per evaluation grow
    with the number of segments); the periodic full pass covers the rest."""
    from phpo.schemas.api import Role
    from phpo.schemas.tasks import TaskSpec
    from phpo.server.auth.identity import Caller
    from phpo.server.db.engine import Database
    from phpo.server.db.tables import PointRow
    from phpo.server.services.hpo import HpoManager
    from phpo.server.services.tasks import TaskService
    from phpo.server.settings import Settings
    from sqlalchemy import func, select

    settings = Settings(data_dir=tmp_path)
    db = Database(settings.effective_database_url)
    db.migrate()
    mgr = HpoManager(db, settings)
    tid = (
        TaskService(db)
        .create(
            Caller("alice", Role.user),
            TaskSpec.model_validate(
                spec(segments=[{"name": n} for n in ("a", "b", "c")], nParallelEvaluation=2)
            ),
        )
        .id
    )

    def per_segment() -> dict[int, int]:
        with db.read() as s:
            return dict(
                s.execute(
                    select(PointRow.segment_idx, func.count())
                    .where(PointRow.task_id == tid)
                    .group_by(PointRow.segment_idx)
                ).all()
            )

    try:
        mgr.run_once({(tid, 1), (tid + 1000, 0)})  # a segment of this task and one of no task
        wait_until(lambda: not mgr.iterations.in_flight(), what="iteration done")
        assert per_segment() == {1: 2}
        mgr.run_once(set())  # nothing named: nothing to do
        assert per_segment() == {1: 2}
        mgr.run_once()  # the full pass
        wait_until(lambda: not mgr.iterations.in_flight(), what="iterations done")
        assert per_segment() == {0: 2, 1: 2, 2: 2}
    finally:
        mgr.stop()
        db.dispose()


def test_a_task_without_any_evaluated_point_fails_with_the_reason(db_url, start_server):
    """Honest end states: a payload that fails every point, and a steering that answers ``[]``
    before anything was evaluated, leave a task with no result: ``failed``, never ``finished``."""
    srv = start_server(db_url)
    with srv.client() as c, srv.client(srv.agent_token) as a:
        tid = create_task(c, maxPoints=2, nParallelEvaluation=2, maxAttempts=1)["id"]
        agent = TinyAgent(srv.url, srv.agent_token, status=3)
        agent.start()
        try:
            t = wait_until(
                lambda: (x := task(c, tid))["state"] in ("finished", "failed") and x,
                timeout=60,
                what="task ended",
            )
        finally:
            agent.halt()
        assert t["state"] == "failed", t
        assert t["counts"]["failed"] == 2 and t["counts"]["evaluated"] == 0
        assert "no point was evaluated" in t["message"] and "payload failed (status 3)" in t["message"]

        tid2 = create_task(
            c, optimizer=None, steeringExec="python steer.py %IN %OUT", searchSpace={"x": [0.0, 1.0]}
        )["id"]
        sj = wait_until(lambda: _steering_job(a), what="a steering job")
        a.post(f"/jobs/{sj['id']}/complete", json={"steering_output": []})
        t2 = wait_until(lambda: (x := task(c, tid2))["state"] in ("finished", "failed") and x, what="ended")
        assert t2["state"] == "failed" and "no point was generated" in t2["message"], t2
