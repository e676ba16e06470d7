"""The pruning decisions themselves, with a real server and a scripted agent that speaks the
agent protocol over HTTP (so the order of reports is fixed and two runs can be compared):

- a server killed with -9 between reports and restarted on the same database decides exactly
  as an uninterrupted one (the decision state comes from the database);
- a decision whose heartbeat answer was lost is given again by the next heartbeat;
- a pruned point is never leased again;
- the decisions are those of Optuna's own pruner run in-process on the same reports."""

from __future__ import annotations

import time

import optuna
import pytest

from tests.server.helpers import wait_until

pytestmark = pytest.mark.slow

STEPS = 6


def curve(x: int, step: int) -> float:
    """A learning curve: worse for higher x, crossing over for x = 5 (slow start, good end)."""
    base = {5: 0.5}.get(x, float(x))
    slow = 4.0 / (step + 1) if x == 5 else 1.0 / (step + 1)
    return base + slow


def _spec(pruner: str, options: dict) -> dict:
    return {
        "evaluationExec": "true",
        "optimizer": "grid",
        "maxPoints": 8,
        "nParallelEvaluation": 2,
        "searchSpace": {"params": {"x": {"type": "int", "low": 0, "high": 7}}},
        "pruner": pruner,
        "prunerOptions": options,
    }


class Scripted:
    """Two points in flight, one report each per round, in a fixed order."""

    def __init__(self, server, tid: int):
        self.server, self.tid = server, tid
        self.held: dict[int, dict] = {}  # point id -> {job, x, step}
        self.leased: list[int] = []
        self.decisions: list[tuple[int, int]] = []  # (x, step) pruned
        self.evaluated: list[int] = []
        self.events: list[tuple[int, int, str]] = []  # what an in-process Optuna study is fed

    def client(self):
        return self.server.client(self.server.agent_token)

    def fill(self) -> None:
        with self.client() as c:
            while len(self.held) < 2:
                r = c.post("/jobs/acquire", json={"agent": "scripted", "site": "local"})
                if r.status_code == 204:
                    with self.server.client() as u:
                        if u.get(f"/tasks/{self.tid}").json()["counts"]["ready"] == 0 and self.held:
                            return
                    time.sleep(0.1)
                    if len(self.leased) >= 8:
                        return
                    continue
                assert r.status_code == 200, r.text
                job = r.json()
                (p,) = job["points"]
                self.leased.append(p["point_id"])
                self.held[p["point_id"]] = {"job": job["id"], "x": p["params"]["x"], "step": 0}
                self.events.append((p["params"]["x"], 0, "new"))

    def round(self, lose_answer: bool = False) -> None:
        with self.client() as c:
            for pid in sorted(self.held):
                h = self.held[pid]
                rep = {"point_id": pid, "step": h["step"], "value": curve(h["x"], h["step"])}
                self.events.append((h["x"], h["step"], "report"))
                r = c.post(f"/jobs/{h['job']}/heartbeat", json={"intermediate": [rep]})
                assert r.status_code == 200, r.text
                stop = r.json()["stop_points"]
                if lose_answer and stop:
                    stop = []  # the answer never reached the agent
                    r2 = c.post(f"/jobs/{h['job']}/heartbeat", json={})
                    assert pid in r2.json()["stop_points"]  # given again, with no new value
                    stop = r2.json()["stop_points"]
                if pid in stop:
                    self.decisions.append((h["x"], h["step"]))
                    assert c.post(f"/jobs/{h['job']}/complete", json={}).status_code == 200
                    del self.held[pid]
                    continue
                h["step"] += 1
                if h["step"] == STEPS:
                    loss = curve(h["x"], STEPS - 1)
                    r = c.post(
                        f"/jobs/{h['job']}/points/{pid}/result",
                        json={"point_id": pid, "status": 0, "loss": loss},
                    )
                    assert r.status_code == 200, r.text
                    assert c.post(f"/jobs/{h['job']}/complete", json={}).status_code == 200
                    self.evaluated.append(h["x"])
                    self.events.append((h["x"], 0, "done"))
                    del self.held[pid]

    def run(self, between=lambda i: None, lose_at: int | None = None) -> None:
        i = 0
        while True:
            self.fill()
            if not self.held:
                return
            self.round(lose_answer=i == lose_at)
            between(i)
            i += 1
            assert i < 200


def _create(server, pruner, options) -> int:
    with server.client() as c:
        r = c.post("/tasks", json=_spec(pruner, options))
        assert r.status_code == 201, r.text
        return r.json()["id"]


def _in_process(pruner_name: str, options: dict, events: list[tuple[int, int, str]]) -> list[tuple[int, int]]:
    """Optuna itself, fed the same reports in the same order (one trial per point, in order)."""
    from phpo.steering.pruners import make_pruner

    study = optuna.create_study(pruner=make_pruner(pruner_name, options), study_name="task1-segment0")
    trials: dict[int, optuna.Trial] = {}
    out = []
    for x, step, kind in events:
        if kind == "new":
            trials[x] = study.ask()
            continue
        t = trials[x]
        if kind == "done":
            study.tell(t, curve(x, STEPS - 1))
            continue
        t.report(curve(x, step), step)
        if t.should_prune():
            out.append((x, step))
            study.tell(t, state=optuna.trial.TrialState.PRUNED)
    return out


@pytest.mark.parametrize(
    "pruner, options",
    [
        ("median", {"n_startup_trials": 2}),
        ("asha", {"min_resource": 1, "reduction_factor": 2}),
    ],
)
def test_kill9_between_reports_decides_as_an_uninterrupted_run(start_server, tmp_path, pruner, options):
    a = start_server(None, "--lease-seconds", "120")
    ra = Scripted(a, _create(a, pruner, options))
    ra.run()
    assert ra.decisions, "the pruner stopped nothing: the comparison would prove nothing"
    assert ra.decisions == _in_process(pruner, options, ra.events)  # Optuna's own decisions

    db = tmp_path / "restarted.db"
    b = start_server(f"sqlite:///{db}", "--lease-seconds", "120")
    rb = Scripted(b, _create(b, pruner, options))

    def crash(i: int) -> None:
        if i in (3, 7):  # kill -9 between two reports, then the same database again
            b.kill()
            b.start()

    rb.run(between=crash)
    with b.client() as c:
        pts = c.get(f"/tasks/{rb.tid}/points", params={"limit": 100}).json()["items"]
    assert rb.decisions == ra.decisions, [(p["serial"], p["params"], p["state"], p["error"]) for p in pts]
    assert rb.evaluated == ra.evaluated
    # never leased twice: each point went to one job
    assert len(rb.leased) == len(set(rb.leased)) == 8
    assert sorted(p["params"]["x"] for p in pts if p["state"] == "pruned") == sorted(
        x for x, _ in ra.decisions
    )
    assert all(p["attempts"] == 0 for p in pts if p["state"] == "pruned"), pts  # never counted as failed


def test_lost_answer_is_given_again_and_pruned_points_are_never_leased_again(start_server):
    s = start_server(None, "--lease-seconds", "120")
    r = Scripted(s, _create(s, "median", {"n_startup_trials": 2}))
    # every answer that names a point to stop is "lost" once
    orig = r.round
    r.round = lambda lose_answer=False: orig(lose_answer=True)  # type: ignore[method-assign]
    r.run()
    assert r.decisions
    assert len(r.leased) == len(set(r.leased)) == 8
    with s.client() as c:
        wait_until(lambda: c.get(f"/tasks/{r.tid}").json()["state"] == "finished", 30)
        t = c.get(f"/tasks/{r.tid}").json()
    assert t["counts"]["pruned"] == len(r.decisions) and t["counts"]["failed"] == 0


@pytest.mark.parametrize(
    "pruner, options",
    [
        ("hyperband", {"min_resource": 1, "max_resource": STEPS, "reduction_factor": 2}),
        (
            "hyperband",
            {"min_resource": 1, "reduction_factor": 2},
        ),  # max_resource "auto": from the first ended trial
    ],
)
def test_hyperband_through_a_real_server_decides_as_optuna(start_server, pruner, options):
    """Hyperband hashes each trial's number into a bracket: the server's study numbers its trials
    as Optuna's does (one per point, in serial order), or the brackets, and so the decisions,
    differ."""
    s = start_server(None, "--lease-seconds", "120")
    r = Scripted(s, _create(s, pruner, options))
    r.run()
    assert r.decisions, "the pruner stopped nothing: the comparison would prove nothing"
    assert r.decisions == _in_process(pruner, options, r.events)
    with s.client() as c:
        pts = c.get(f"/tasks/{r.tid}/points", params={"limit": 100}).json()["items"]
    assert sorted(p["params"]["x"] for p in pts if p["state"] == "pruned") == sorted(
        x for x, _ in r.decisions
    )
