"""Every pruner a task may name decides as Optuna's own study does, on the same history.

In process, on a real SQLite database: the server's own ``JobBroker`` (its heartbeat runs the
decider of ``phpo.server.services.pruning``) is fed a fixed history (points leased two at a time
in serial order, one intermediate value per heartbeat, a result at the last step, the job ended
when the answer says stop); the same reports, in the same order, go to an in-process
``optuna.Study`` with the same pruner and options, named as phpo names a segment's study
(``task{id}-segment{idx}``) and holding one trial per point in serial order, as phpo's does (the
trial numbers are what Hyperband's brackets hash). The decisions must be identical; midway the
broker gets a fresh decider (a restarted server), which rebuilds its study from the database."""

from __future__ import annotations

import optuna
import pytest
from phpo.schemas.api import Role
from phpo.schemas.jobs import (
    AcquireRequest,
    CompleteRequest,
    HeartbeatRequest,
    IntermediateReport,
    PointResult,
)
from phpo.schemas.tasks import TaskSpec
from phpo.server.auth.identity import Caller
from phpo.server.db.engine import Database, utcnow
from phpo.server.db.tables import PointRow
from phpo.server.services.job_broker import JobBroker
from phpo.server.services.pruning import PruningDecider
from phpo.server.services.tasks import insert_task
from phpo.server.settings import Settings
from phpo.steering.pruners import make_pruner

AGENT = Caller(name="agent", role=Role.agent)
POINTS, STEPS, IN_FLIGHT = 16, 8, 2

PRUNERS = [
    ("none", {}),
    ("median", {"n_startup_trials": 2, "n_warmup_steps": 1}),
    ("percentile", {"percentile": 40.0, "n_startup_trials": 2}),
    ("asha", {"min_resource": 1, "reduction_factor": 2}),
    ("hyperband", {"min_resource": 1, "max_resource": STEPS, "reduction_factor": 2}),
    ("wilcoxon", {"p_threshold": 0.2, "n_startup_steps": 2}),
]


def curve(serial: int, step: int) -> float:
    """Learning curves of different levels, some slow starters, with a little per-step wiggle
    (so Wilcoxon's signed ranks have no ties)."""
    level = (serial * 7 % 11) / 11.0
    slow = 3.0 if serial % 5 == 3 else 1.0
    return level + slow / (step + 1) + ((serial * 31 + step * 17) % 13) / 1000.0


def _task(db: Database, pruner: str, options: dict) -> int:
    ts = TaskSpec.model_validate(
        {
            "evaluationExec": "true",
            "optimizer": "random",
            "maxPoints": POINTS,
            "nParallelEvaluation": IN_FLIGHT,
            "maxPointsPerEvaluationJob": 1,
            "searchSpace": {"x": {"method": "uniform", "dimension": {"low": 0.0, "high": 1.0}}},
            "pruner": pruner,
            "prunerOptions": options,
        }
    )
    with db.write() as s:
        task = insert_task(s, "alice", ts)
        now = utcnow()
        for i in range(POINTS):  # a batch of points, as the HPO manager stores them
            s.add(
                PointRow(
                    task_id=task.id,
                    segment_idx=0,
                    serial=i,
                    params={"x": i / POINTS},
                    state="ready",
                    attempts=0,
                    intermediate=[],
                    created_at=now,
                    updated_at=now,
                )
            )
        return task.id


def run_server(db: Database, broker: JobBroker, restart_at: int) -> tuple[list, list]:
    """The history through the broker; returns (decisions [(serial, step)], events)."""
    held: dict[int, dict] = {}  # job id -> {point, serial, step}
    decisions: list[tuple[int, int]] = []
    events: list[tuple[int, int, str]] = []
    n = 0
    while True:
        while len(held) < IN_FLIGHT:
            job = broker.acquire(AGENT, AcquireRequest(agent="a1", site="local", kinds=["evaluation"]))
            if job is None:
                break
            (p,) = job.points
            held[job.id] = {"point": p.point_id, "serial": p.serial, "step": 0}
        if not held:
            return decisions, events
        for jid in sorted(held):
            h = held[jid]
            n += 1
            if n == restart_at:
                broker.pruning = PruningDecider()  # a restarted server: the study comes from the database
            ans = broker.heartbeat(
                AGENT,
                jid,
                HeartbeatRequest(
                    intermediate=[
                        IntermediateReport(
                            point_id=h["point"], step=h["step"], value=curve(h["serial"], h["step"])
                        )
                    ]
                ),
            )
            events.append((h["serial"], h["step"], "report"))
            if h["point"] in ans.stop_points:
                decisions.append((h["serial"], h["step"]))
                broker.complete(AGENT, jid, CompleteRequest())
                del held[jid]
                continue
            h["step"] += 1
            if h["step"] == STEPS:
                broker.complete(
                    AGENT,
                    jid,
                    CompleteRequest(
                        results=[
                            PointResult(point_id=h["point"], status=0, loss=curve(h["serial"], STEPS - 1))
                        ]
                    ),
                )
                events.append((h["serial"], STEPS - 1, "done"))
                del held[jid]


def run_optuna(task_id: int, pruner: str, options: dict, events: list) -> list[tuple[int, int]]:
    """Optuna itself: one trial per point in serial order (the points exist before any report),
    ``report`` + ``should_prune`` per value, ``tell`` at the end."""
    study = optuna.create_study(
        study_name=f"task{task_id}-segment0",
        pruner=make_pruner(pruner, options) or optuna.pruners.NopPruner(),
    )
    trials = [study.ask() for _ in range(POINTS)]
    out = []
    for serial, step, kind in events:
        t = trials[serial]
        if kind == "done":
            study.tell(t, curve(serial, step))
            continue
        t.report(curve(serial, step), step)
        if t.should_prune():
            out.append((serial, step))
            study.tell(t, state=optuna.trial.TrialState.PRUNED)
    return out


@pytest.mark.parametrize("pruner, options", PRUNERS, ids=[p for p, _ in PRUNERS])
def test_decisions_are_optunas_own(tmp_path, pruner, options):
    url = f"sqlite:///{tmp_path / 'phpo.db'}"
    db = Database(url)
    db.migrate()
    try:
        tid = _task(db, pruner, options)
        broker = JobBroker(db, Settings(data_dir=tmp_path, database_url=url))
        decisions, events = run_server(db, broker, restart_at=40)
        expected = run_optuna(tid, pruner, options, events)
        assert decisions == expected
        if pruner == "none":
            assert decisions == []
        else:
            assert decisions, "the pruner stopped nothing: the comparison would prove nothing"
            assert len(decisions) < POINTS  # some point ran to its result
        with db.read() as s:
            pruned = sorted(
                s.query(PointRow.serial).filter(PointRow.task_id == tid, PointRow.state == "pruned").all()
            )
        assert [x for (x,) in pruned] == sorted(x for x, _ in decisions)
    finally:
        db.dispose()


def test_a_change_committed_after_a_later_stamped_one_is_still_seen(db_url):
    """A point's end stamped before another point's report but committed only after the decider
    read that report (a concurrent heartbeat, another replica, clocks a little apart) still
    reaches the study, and the next decision counts it (it used to be skipped for good: its
    stamp was older than the newest one seen)."""
    from datetime import timedelta

    from phpo.server.db.tables import TaskRow

    db = Database(db_url)
    db.migrate()
    try:
        tid = _task(db, "median", {"n_startup_trials": 1, "n_warmup_steps": 0})
        decider = PruningDecider()
        with db.read() as s:
            spec = TaskSpec.model_validate(s.get(TaskRow, tid).spec)
            a, b, c = (r.id for r in s.query(PointRow).filter_by(task_id=tid).order_by(PointRow.serial)[:3])
        t0 = utcnow() + timedelta(seconds=5)

        def stamp(pid, state, value, at, **kw):
            with db.write() as s:
                p = s.get(PointRow, pid)
                p.state, p.intermediate, p.updated_at = state, [{"step": 0, "value": value}], at
                for k, v in kw.items():
                    setattr(p, k, v)

        def decide(pid):
            with db.write() as s:
                return decider.decide(s, tid, 0, spec, {pid})

        stamp(b, "leased", 0.5, t0 + timedelta(seconds=1))
        assert decide(b) == {}  # nothing completed yet: no pruning before the first result
        # point a ended (loss 0.1) in a transaction stamped at t0, committed only now
        stamp(a, "evaluated", 0.1, t0, loss=0.1, loss_value=0.1)
        stamp(c, "leased", 0.9, t0 + timedelta(seconds=2))
        decided = decide(c)
        seg = decider._segments[(tid, 0)]
        assert seg.state[a] == "evaluated"
        assert set(decided) == {c}  # 0.9 at step 0 is worse than the one completed trial's 0.1
    finally:
        db.dispose()
