"""``phpo agent --executor dask``: evaluations as tasks on a real Dask cluster (a ``dask
scheduler`` and ``dask worker`` processes on 127.0.0.1), with the agent's own leases, heartbeats,
checkpoints and outbox; a worker killed mid-point is a failed attempt that resumes from its
checkpoint, never a lost point and never a second silent run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .agent_helpers import (
    PY,
    base_spec,
    free_port,
    get_artifacts,
    get_points,
    pid_alive,
    submit,
    wait_task,
    wait_until,
    write_payload,
)
from .test_agent_e2e import EPOCHS, expected_acc

pytest.importorskip("distributed", reason="the dask extra is not installed")
DASK = shutil.which("dask", path=str(Path(sys.executable).parent)) or shutil.which("dask")

# EPOCHS, and the pid of its parent: the Dask worker process that started it
EPOCHS_ON_DASK = EPOCHS.replace(
    'open(sys.argv[1], "a").write(f"{os.getpid()}\\n")',
    'open(sys.argv[1], "a").write(f"{p[\'x\']} {os.getpid()} {os.getppid()}\\n")',
)


@pytest.fixture
def dask_cluster(tmp_path):
    """A scheduler and two single-thread workers without nannies (a killed worker stays dead)."""
    if DASK is None:
        pytest.skip("the dask command is not installed")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []

    def start(*args: str, log: str) -> subprocess.Popen:
        with open(tmp_path / log, "w") as f:
            p = subprocess.Popen([DASK, *args], stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(p)
        return p

    start("scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard", log="scheduler.log")
    workers = [
        start(
            "worker",
            address,
            "--nthreads",
            "1",
            "--no-nanny",
            "--no-dashboard",
            "--host",
            "127.0.0.1",
            "--name",
            f"w{i}",
            log=f"worker{i}.log",
        )
        for i in range(2)
    ]
    from distributed import Client

    with Client(address, timeout=60) as c:
        c.wait_for_workers(2, timeout=60)
    yield address, workers
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()


def test_points_run_on_dask_workers_and_a_killed_worker_is_a_retried_attempt(
    live_server, start_agent, dask_cluster, tmp_path
):
    address, workers = dask_cluster
    worker_pids = {w.pid for w in workers}
    script = write_payload(tmp_path / "epochs.py", EPOCHS_ON_DASK)
    runs = tmp_path / "runs.txt"
    tid = submit(
        live_server,
        base_spec(
            f"{PY} {script} {runs}",
            maxPoints=2,
            nParallelEvaluation=2,
            searchSpace={"params": {"x": {"type": "int", "low": 3, "high": 4}}},
            checkPointToSave="ckpt",
            checkPointInterval="1s",
        ),
    )
    agent = start_agent(live_server, "--executor", "dask", "--scheduler", address, "--slots", "2")

    def started() -> list[list[int]]:
        return (
            [list(map(int, line.split())) for line in runs.read_text().splitlines()] if runs.exists() else []
        )

    wait_until(lambda: len(started()) == 2, 90, "both points to start on the workers", agent.log)
    assert {
        ppid for _, _, ppid in started()
    } == worker_pids  # one point per worker, not children of the agent
    wait_until(
        lambda: {a["point_id"] for a in get_artifacts(live_server, tid, "checkpoint")}.__len__() == 2,
        60,
        "a checkpoint of each point",
        agent.log,
    )
    x, payload_pid, worker_pid = next(r for r in started() if r[0] == 3)
    os.kill(worker_pid, signal.SIGKILL)  # the worker running point x=3 is lost mid-point
    wait_until(lambda: not pid_alive(payload_pid), 10, "the payload to die with its worker")

    t = wait_task(live_server, tid, timeout=120, agents=(agent,))
    assert t["state"] == "finished", t
    pts = {p["params"]["x"]: p for p in get_points(live_server, tid)}
    assert pts[3]["loss"] == expected_acc(3) and pts[4]["loss"] == expected_acc(4)
    assert pts[3]["attempts"] == 2 and pts[3]["metrics"]["start_epoch"] > 0  # resumed, not restarted
    assert pts[4]["attempts"] == 1
    # the second run of x=3 went to the surviving worker; Dask's own re-run was refused
    assert [r[0] for r in started()].count(3) == 2
    assert started()[-1][2] != worker_pid
    (log,) = [
        a
        for a in get_artifacts(live_server, tid, "log")
        if a["point_id"] == pts[3]["id"] and a["name"].endswith("a1.stderr.txt")
    ]
    with live_server.client() as c:
        text = c.get(f"/artifacts/{log['id']}").text
    assert "the Dask worker" in text and "was lost" in text, text  # the failed attempt says why


def test_no_scheduler_is_a_clear_error(live_server, start_agent):
    agent = start_agent(live_server, "--executor", "dask", "--scheduler", f"tcp://127.0.0.1:{free_port()}")
    rc = agent.wait(90)
    assert rc != 0
    assert "no Dask scheduler answers" in agent.log()
