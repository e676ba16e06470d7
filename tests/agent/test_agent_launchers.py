"""``--launcher dask`` and ``--launcher horovodrun``: a real agent runs points through them.

dask: the agent starts a real Dask LocalCluster of ``nProcessesPerPoint`` workers on loopback for
each point, the payload (``examples/distributed/dask_payload.py``) connects with a bare
``Client()`` through ``DASK_SCHEDULER_ADDRESS`` and fits its folds on the workers; the cluster is
gone when the point ends. horovodrun: where Horovod is installed (``make horovod``), a point is
trained by two Horovod ranks over Gloo on loopback; where it is not, the points fail with the
reason, never a success."""

from __future__ import annotations

import psutil
import pytest

from .agent_helpers import PY, REPO, base_spec, get_points, submit, wait_task, wait_until

pytest.importorskip("distributed", reason="dask.distributed is not installed")
pytest.importorskip("sklearn", reason="scikit-learn is not installed")

DASK_PAYLOAD = REPO / "examples" / "distributed" / "dask_payload.py"


def test_dask_launcher_gives_each_point_its_own_loopback_cluster(live_server, start_agent):
    space = {
        "params": {
            "n_estimators": {"type": "int", "low": 5, "high": 20},
            "max_depth": {"type": "int", "low": 2, "high": 6},
        }
    }
    tid = submit(
        live_server,
        base_spec(
            f"{PY} {DASK_PAYLOAD}",
            maxPoints=2,
            searchSpace=space,
            optimizer="random",
            launcher="dask",
            nProcessesPerPoint=2,
        ),
    )
    agent = start_agent(live_server, env={"OMP_NUM_THREADS": "1"})
    t = wait_task(live_server, tid, timeout=180, agents=(agent,))
    assert t["state"] == "finished", t
    points = get_points(live_server, tid)
    assert [p["state"] for p in points] == ["evaluated", "evaluated"], points
    schedulers = set()
    for p in points:
        m = p["metrics"]
        assert m["n_workers"] == 2, m  # the cluster has nProcessesPerPoint workers
        assert m["scheduler"].startswith("tcp://127.0.0.1:"), m  # scheduler on loopback, not every interface
        assert all(w.startswith("tcp://127.0.0.1:") for w in m["workers"]), m
        assert len(m["fold_losses"]) == 4 and 0 < p["loss"] < 2.4, p
        schedulers.add(m["scheduler"])
    assert len(schedulers) == 2  # one cluster per point
    # the clusters went with their points: no worker process is left under the agent
    left = [
        c
        for c in psutil.Process(agent.proc.pid).children(recursive=True)
        if "distributed" in " ".join(c.cmdline())
    ]
    assert not left, [c.cmdline() for c in left]


def test_dask_launcher_cannot_run_in_an_evaluation_container():
    """The cluster runs in the agent's environment, so a containerised payload could not reach
    it: the agent fails such a point with the reason (a ValueError: no retry on another agent)."""
    from phpo.evaluation_container.launchers import launch_command

    with pytest.raises(ValueError, match="evaluation container"):
        launch_command("dask", "python x.py", 2, container=True)


def test_horovodrun_missing_fails_the_points_with_the_reason(live_server, start_agent):
    import importlib.util
    import shutil

    if shutil.which("horovodrun") or importlib.util.find_spec("horovod") is not None:
        pytest.skip("horovod is installed here: this test is about an agent without it")
    tid = submit(
        live_server,
        base_spec(
            f"{PY} -c 'print(1)'", maxPoints=1, launcher="horovodrun", nProcessesPerPoint=2, maxAttempts=2
        ),
    )
    agent = start_agent(live_server)
    t = wait_task(live_server, tid, timeout=120, agents=(agent,))
    assert t["state"] == "failed", t
    (p,) = get_points(live_server, tid)
    assert p["state"] == "failed" and "horovodrun is not installed" in (p.get("error") or ""), p


HOROVOD_PAYLOAD = REPO / "examples" / "distributed" / "horovod_train.py"


def test_horovodrun_trains_one_point_with_two_ranks_on_loopback(live_server, start_agent):
    """Where Horovod (with PyTorch and Gloo) is installed in the agent's environment (``make
    horovod``): a real agent runs a point through horovodrun, two ranks average their gradients
    over Gloo on lo, rank 0 reports, and nothing of the run listens beyond loopback."""
    pytest.importorskip("horovod.torch", reason="horovod is not installed (make horovod builds it)")
    pytest.importorskip("torch", reason="torch is not installed")
    from .test_agent_torchrun import listening

    space = {
        "params": {
            "lr": {"type": "float", "low": 0.05, "high": 0.05},
            "hidden": {"type": "int", "low": 32, "high": 32},
            "epochs": {"type": "int", "low": 30, "high": 30},
        }
    }
    tid = submit(
        live_server,
        base_spec(
            f"{PY} {HOROVOD_PAYLOAD}",
            maxPoints=1,
            searchSpace=space,
            optimizer="random",
            launcher="horovodrun",
            nProcessesPerPoint=2,
            checkPointToSave="ckpt",
        ),
    )
    agent = start_agent(live_server, env={"OMP_NUM_THREADS": "1"})
    seen: list[str] = []

    def ranks_listening() -> bool:  # both ranks' Python processes up, and what listens meanwhile
        ranks = {
            _env(c).get("HOROVOD_RANK")
            for c in psutil.Process(agent.proc.pid).children(recursive=True)
            if _cmdline(c)[:1] == [PY] and "horovod_train.py" in " ".join(_cmdline(c))
        }
        if ranks >= {"0", "1"}:
            seen.extend(listening(agent))
        return ranks >= {"0", "1"} and bool(seen)

    wait_until(ranks_listening, 180, "two horovod ranks", agent.log)
    t = wait_task(live_server, tid, timeout=240, agents=(agent,))
    assert t["state"] == "finished", t
    (p,) = get_points(live_server, tid)
    assert p["state"] == "evaluated" and p["attempts"] == 1, p
    assert p["metrics"]["world_size"] == 2 and sorted(p["metrics"]["local_ranks"]) == [0, 1], p
    assert 0 < p["loss"] < 2.3, p
    assert seen and set(seen) <= {"127.0.0.1", "::1"}, seen  # horovodrun's servers and Gloo on loopback only


def _env(proc: psutil.Process) -> dict[str, str]:
    try:
        return proc.environ()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return {}


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []
