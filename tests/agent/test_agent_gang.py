"""``--nNodesPerPoint``: one point trained by several real agents together (gang leasing).

Real server, real agents, real torchrun (c10d rendezvous hosted by node rank 0's agent) and real
DDP ranks with gloo on the CPU. Mocked: only the "nodes" themselves. Every agent runs on this one
machine with its rendezvous on 127.0.0.1 (``--rendezvous-host`` default), so a run across several
hosts is not possible here; what travels between the agents (the rendezvous endpoint in the
lease, the c10d store, the gloo connections) is the same as across hosts.
"""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from .agent_helpers import (
    PY,
    REPO,
    base_spec,
    get_artifacts,
    get_points,
    get_task,
    submit,
    wait_task,
    wait_until,
)

DDP = REPO / "examples" / "distributed" / "ddp_train.py"
ENV = {"OMP_NUM_THREADS": "1"}


def ddp_space(epochs: int) -> dict:
    return {
        "params": {
            "lr": {"type": "float", "low": 0.05, "high": 0.05},
            "hidden": {"type": "int", "low": 32, "high": 32},
            "epochs": {"type": "int", "low": epochs, "high": epochs},
        }
    }


def jobs_of(server, task_id: int) -> list[dict]:
    """The task's jobs as stored (the API has no job listing)."""
    url = server.database_url or f"sqlite:///{Path(server.data_dir) / 'phpo.db'}"
    eng = create_engine(url)
    try:
        with eng.connect() as c:
            rows = (
                c.execute(
                    text(
                        "SELECT id, agent, state, payload, error FROM jobs WHERE task_id = :t "
                        "AND kind = 'evaluation' ORDER BY id"
                    ),
                    {"t": task_id},
                )
                .mappings()
                .all()
            )
    finally:
        eng.dispose()
    out = []
    for r in rows:
        d = dict(r)
        if isinstance(d["payload"], str):
            import json

            d["payload"] = json.loads(d["payload"])
        out.append(d)
    return out


def closed_jobs_of(server, task_id: int) -> list[dict]:
    """The task's jobs once none runs: node rank 0 reports the point, and a member's job closes
    when its own torchrun has exited, which may be a moment after the task finished."""
    wait_until(
        lambda: all(j["state"] != "running" for j in jobs_of(server, task_id)),
        60,
        "the members' jobs to end",
        lambda: str(jobs_of(server, task_id)),
    )
    return jobs_of(server, task_id)


def test_bad_node_counts_are_refused_naming_the_field(live_server):
    with live_server.client() as c:
        for bad in ("0", "3:2", "2:x", "1:2:3", "65", "0:2", "1:65"):
            r = c.post("/tasks", json=base_spec("python x.py", launcher="torchrun", nNodesPerPoint=bad))
            assert r.status_code == 422 and "nNodesPerPoint" in r.text, (bad, r.text)
        r = c.post("/tasks", json=base_spec("python x.py", nNodesPerPoint=2))  # no launcher
        assert r.status_code == 422 and "nNodesPerPoint" in r.text and "torchrun" in r.text, r.text
        r = c.post(
            "/tasks", json=base_spec("python x.py", launcher="torchrun", nNodesPerPoint=2, gangTimeout=0)
        )
        assert r.status_code == 422 and "gangTimeout" in r.text, r.text
        assert c.get("/tasks").json()["items"] == []  # nothing stored


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_a_gang_that_does_not_form_gives_the_slot_back_without_spending_an_attempt(
    start_server, db_url, start_agent
):
    server = start_server(db_url)
    tid = submit(
        server,
        base_spec(
            "python -c 'raise SystemExit(3)'",
            maxPoints=1,
            launcher="torchrun",
            nNodesPerPoint=2,
            gangTimeout=3,
        ),
    )
    agent = start_agent(server, "--once", "--no-steering")
    assert agent.wait(90) == 0, agent.log()  # its one job ended: the gang dissolved, the agent is free
    (job,) = jobs_of(server, tid)
    assert (
        job["state"] == "cancelled" and "gangTimeout" in job["error"] and "only 1 joined" in job["error"]
    ), job
    (p,) = get_points(server, tid)
    assert p["state"] == "ready" and p["attempts"] == 0, p  # no attempt spent, never run
    t = get_task(server, tid)
    assert t["state"] == "running" and "gang of 2 agents" in (t["waiting_for"] or ""), t
    assert "joined the point" not in agent.log() and "Traceback" not in agent.log(), agent.log()


def test_two_agents_train_one_point_and_one_reports(live_server, start_agent):
    pytest.importorskip("torch", reason="torch is not installed")
    pytest.importorskip("sklearn", reason="scikit-learn is not installed")
    from .test_agent_torchrun import listening, ranks_of

    tid = submit(
        live_server,
        base_spec(
            f"{PY} {DDP}",
            maxPoints=1,
            searchSpace=ddp_space(3),
            optimizer="random",
            launcher="torchrun",
            nNodesPerPoint=2,
            gangTimeout=120,
        ),
    )
    agents = [start_agent(live_server, "--no-steering", env=ENV) for _ in range(3)]
    wait_until(
        lambda: sum(bool(ranks_of(a)) for a in agents) == 2,
        120,
        "ranks on two agents",
        lambda: "\n".join(a.log()[-3000:] for a in agents),
    )
    addrs = [ip for a in agents for ip in listening(a)]
    assert addrs and set(addrs) <= {"127.0.0.1", "::1"}, (
        addrs
    )  # rendezvous and stores never on all interfaces

    t = wait_task(live_server, tid, timeout=180, agents=tuple(agents))
    assert t["state"] == "finished", t
    (p,) = get_points(live_server, tid)
    assert p["state"] == "evaluated" and p["attempts"] == 1, p  # one run
    assert p["metrics"]["world_size"] == 2, p  # one rank on each agent
    assert 0 < p["loss"] < 2.3, p
    jobs = closed_jobs_of(live_server, tid)
    assert len(jobs) == 2 and {j["state"] for j in jobs} == {"succeeded"}, jobs  # never a third, half-leased
    leader, member = jobs
    assert leader["payload"]["gang"]["formed"] and member["payload"] == {
        "gang_of": leader["id"],
        "node_rank": 1,
    }
    assert leader["agent"] != member["agent"]


def test_a_member_killed_mid_point_fails_the_attempt_and_the_point_resumes_from_the_checkpoint(
    live_server, start_agent
):
    pytest.importorskip("torch", reason="torch is not installed")
    pytest.importorskip("sklearn", reason="scikit-learn is not installed")
    from .test_agent_torchrun import ranks_of

    tid = submit(
        live_server,
        base_spec(
            f"{PY} {DDP}",
            maxPoints=1,
            searchSpace=ddp_space(30),
            optimizer="random",
            launcher="torchrun",
            nNodesPerPoint=2,
            gangTimeout=120,
            checkPointToSave="ckpt",
            checkPointInterval="1s",
        ),
    )
    agents = [start_agent(live_server, "--no-steering", env=ENV) for _ in range(2)]

    def rank1():
        for a in agents:
            r = ranks_of(a)
            if "1" in r:
                return r["1"]
        return None

    wait_until(rank1, 120, "node rank 1's rank to start", lambda: "\n".join(a.log()[-3000:] for a in agents))
    wait_until(
        lambda: get_artifacts(live_server, tid, "checkpoint"),
        120,
        "rank 0's first checkpoint",
        lambda: "\n".join(a.log()[-3000:] for a in agents),
    )
    rank1().send_signal(signal.SIGKILL)  # the other node's rank dies: the whole attempt fails

    t = wait_task(live_server, tid, timeout=240, agents=tuple(agents))
    assert t["state"] == "finished", t
    (p,) = get_points(live_server, tid)
    assert p["state"] == "evaluated" and p["attempts"] == 2, p  # a failed run, then the one that worked
    assert p["metrics"]["world_size"] == 2 and p["metrics"]["start_epoch"] > 0, p  # resumed, on two agents
    jobs = closed_jobs_of(live_server, tid)
    first = [j for j in jobs if j["id"] in (jobs[0]["id"], jobs[1]["id"])]
    assert {j["state"] for j in first} <= {"failed", "cancelled"} and "failed" in {
        j["state"] for j in first
    }, jobs
    assert [j["state"] for j in jobs[2:]] == ["succeeded", "succeeded"], jobs


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("0.0.0.0", "never listens on all interfaces"),
        ("::", "never listens on all interfaces"),
        ("192.0.2.1", "not an address of this machine"),
    ],
)
def test_the_rendezvous_host_must_be_an_address_of_the_agent(tmp_path, host, why):
    import subprocess

    tok = tmp_path / "token"
    tok.write_text("x")
    tok.chmod(0o600)
    r = subprocess.run(
        [
            PY,
            "-m",
            "phpo.evaluation_container",
            "--server",
            "http://127.0.0.1:9",
            "--token-file",
            str(tok),
            "--site",
            "s",
            "--workdir",
            str(tmp_path / "w"),
            "--rendezvous-host",
            host,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "--rendezvous-host" in r.stderr and why in r.stderr, r.stderr


def test_an_elastic_point_grows_to_a_second_agent_and_survives_losing_it(live_server, start_agent):
    """``nNodesPerPoint 1:2``: the point starts on one agent, grows when a second one comes (torchrun
    restarts the ranks in a world of 2, from rank 0's checkpoint), and when that agent is killed
    the first trains on alone; the point is reported once, by node rank 0, in its first attempt."""
    pytest.importorskip("torch", reason="torch is not installed")
    pytest.importorskip("sklearn", reason="scikit-learn is not installed")
    import psutil

    from .test_agent_torchrun import listening, ranks_of

    tid = submit(
        live_server,
        base_spec(
            f"{PY} {DDP}",
            maxPoints=1,
            searchSpace=ddp_space(1000),
            optimizer="random",
            launcher="torchrun",
            nNodesPerPoint="1:2",
            gangTimeout=120,
            checkPointToSave="ckpt",
            checkPointInterval="1s",
        ),
    )
    first = start_agent(live_server, "--no-steering", env=ENV)
    logs = lambda: "\n".join(a.log()[-3000:] for a in (first, *others))  # noqa: E731
    others: list = []
    wait_until(
        lambda: get_artifacts(live_server, tid, "checkpoint"), 180, "the first agent's checkpoint", logs
    )
    others.append(start_agent(live_server, "--no-steering", env=ENV))
    second = others[0]
    wait_until(lambda: ranks_of(second), 180, "the second agent's rank", logs)
    # a checkpoint replaces the point's previous one: two newer ids than the one at the join
    newest = lambda: max((a["id"] for a in get_artifacts(live_server, tid, "checkpoint")), default=0)  # noqa: E731
    n = newest()
    wait_until(lambda: newest() > n + 1, 180, "training on two agents", logs)
    addrs = [ip for a in (first, second) for ip in listening(a)]
    assert addrs and set(addrs) <= {"127.0.0.1", "::1"}, addrs  # each round's store too, never all interfaces
    tree = [psutil.Process(second.proc.pid), *psutil.Process(second.proc.pid).children(recursive=True)]
    for proc in tree:  # the second node dies whole: agent, torchrun and rank
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)

    t = wait_task(live_server, tid, timeout=400, agents=(first,))
    assert t["state"] == "finished", t
    (p,) = get_points(live_server, tid)
    assert p["state"] == "evaluated" and p["attempts"] == 1, p  # never retried
    worlds = p["metrics"]["world_sizes"]
    assert worlds[0] == 1 and 2 in worlds and worlds[-1] == 1, worlds  # grew, then shrank
    assert p["metrics"]["start_epoch"] > 0, p  # the last restart resumed from rank 0's checkpoint
    jobs = jobs_of(live_server, tid)
    assert [j["agent"] for j in jobs] == ["test-agent-0", "test-agent-1"], jobs
    assert jobs[0]["state"] == "succeeded", jobs  # node rank 0 reported the point
