"""``--launcher torchrun --nProcessesPerPoint 2``: one point trained by two real DDP processes
(gloo on the CPU, rendezvous on loopback) started by a real agent through torchrun; rank 0
checkpoints and reports; a rank killed with -9 fails the attempt and the point resumes from its
checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess

import psutil
import pytest

from .agent_helpers import PY, REPO, base_spec, get_artifacts, get_points, submit, wait_task, wait_until

pytest.importorskip("torch", reason="torch is not installed")
pytest.importorskip("sklearn", reason="scikit-learn is not installed")

DDP = REPO / "examples" / "distributed" / "ddp_train.py"


def ranks_of(agent) -> dict[str, psutil.Process]:
    """The payload's rank processes under the agent, by their RANK."""
    out = {}
    for p in psutil.Process(agent.proc.pid).children(recursive=True):
        try:
            env = p.environ()
            if "RANK" in env and "ddp_train.py" in " ".join(p.cmdline()):
                out[env["RANK"]] = p
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def listening(agent) -> list[str]:
    """Every address a process of the agent's payload tree listens on."""
    addrs = []
    for p in psutil.Process(agent.proc.pid).children(recursive=True):
        try:
            addrs += [c.laddr.ip for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return addrs


def test_two_ranks_rendezvous_on_loopback_and_a_killed_rank_resumes_from_the_checkpoint(
    live_server, start_agent
):
    space = {
        "params": {
            "lr": {"type": "float", "low": 0.04, "high": 0.06},
            "hidden": {"type": "int", "low": 32, "high": 32},
            "epochs": {"type": "int", "low": 60, "high": 60},
        }
    }
    tid = submit(
        live_server,
        base_spec(
            f"{PY} {DDP}",
            maxPoints=1,
            searchSpace=space,
            optimizer="random",
            launcher="torchrun",
            nProcessesPerPoint=2,
            checkPointToSave="ckpt",
            checkPointInterval="1s",
        ),
    )
    agent = start_agent(live_server, env={"OMP_NUM_THREADS": "1"})
    wait_until(lambda: set(ranks_of(agent)) == {"0", "1"}, 120, "both ranks to start", agent.log)
    wait_until(
        lambda: get_artifacts(live_server, tid, "checkpoint"), 120, "rank 0's first checkpoint", agent.log
    )
    addrs = listening(agent)
    assert addrs and set(addrs) <= {"127.0.0.1", "::1"}, addrs  # the rendezvous never on all interfaces
    ranks_of(agent)["1"].send_signal(
        signal.SIGKILL
    )  # one rank dies: torchrun ends the other, the attempt fails

    t = wait_task(live_server, tid, timeout=240, agents=(agent,))
    assert t["state"] == "finished", t
    (p,) = get_points(live_server, tid)
    assert p["attempts"] == 2, p
    assert p["metrics"]["world_size"] == 2  # rank 0 reported for a world of two
    assert p["metrics"]["start_epoch"] > 0, "the second attempt started from scratch"
    assert 0 < p["loss"] < 1.0  # a trained digits classifier (the untrained loss is ~2.3)


def test_more_processes_than_one_need_a_launcher(live_server):
    with live_server.client() as c:
        r = c.post("/tasks", json=base_spec("python x.py", nProcessesPerPoint=2))
        assert r.status_code == 422 and "nProcessesPerPoint" in r.text, r.text
        r = c.post("/tasks", json=base_spec("python x.py", launcher="mpirun"))
        assert r.status_code == 422 and "launcher" in r.text, r.text
        assert c.get("/tasks").json()["items"] == []  # nothing stored


def test_each_rank_gets_one_gpu_of_the_slot(tmp_path):
    """No GPU here: the slot's GPU indices are only what each rank finds in CUDA_VISIBLE_DEVICES."""
    from phpo.evaluation_container.launchers import torchrun_command

    out = tmp_path / "ranks.txt"
    cmd = torchrun_command(
        f'echo "$RANK $LOCAL_RANK $WORLD_SIZE $CUDA_VISIBLE_DEVICES $MASTER_ADDR" >> {out}', 3, [4, 6]
    )
    r = subprocess.run(
        ["bash", "-c", cmd],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(out.read_text().splitlines()) == [
        "0 0 3 4 127.0.0.1",
        "1 1 3 6 127.0.0.1",
        "2 2 3 4 127.0.0.1",
    ]
