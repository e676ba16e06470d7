"""The specs pass of a task runs once, whichever machine runs its jobs: a real server and two
agents as real processes, each with its own data cache and home directory (two machines). The
first agent's job computes the specs and uploads them as the task's ``specs`` artifact; the
second agent's job downloads them and uses them even though the files' mtimes differ on its side
(another machine's copies); a file whose content changed gets a fresh pass, never the old specs.
Each job reports ``stream.specs_source`` (computed / cache / shared) as a metric."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from .agent_helpers import PY, get_points, sandbox_upload, submit

pytestmark = pytest.mark.slow

pytest.importorskip("uproot", reason="phpo[data] is not installed (uproot)")

HEP = Path(__file__).resolve().parents[1] / "data" / "hep"
TTBAR = HEP / "nanoAOD_2015_CMS_Open_Data_ttbar.root"
DY = HEP / "uproot-small-dy-withoffsets.root"

PAYLOAD = """\
from phpo.evaluation_container import sdk

stream = sdk.training_data(labels={"ttbar": 1, "dy": 0}, identifier=["event"], chunk_size=128)
print("phpo.data specs:", stream.specs_source)
sdk.report(0.5, metrics={"specs": stream.specs_source, "events": stream.num_events})
"""


def _specs_artifacts(server, tid: int) -> list[dict]:
    with server.client() as c:
        r = c.get(f"/tasks/{tid}/artifacts", params={"kind": "specs"})
        assert r.status_code == 200, r.text
        return r.json()["items"]


def _run_one_job(server, start_agent, tmp_path: Path, machine: str) -> None:
    """One agent as if on its own machine: its own data cache and home; it runs one job, exits."""
    home = tmp_path / machine / "home"
    home.mkdir(parents=True, exist_ok=True)
    agent = start_agent(
        server,
        "--once",
        env={
            "PHPO_DATA_CACHE": str(tmp_path / machine / "cache"),
            "HOME": str(home),
            "XDG_CACHE_HOME": str(home / ".cache"),
        },
    )
    assert agent.wait(timeout=180) == 0, agent.log()[-4000:]


def _evaluated(server, tid: int) -> list[dict]:
    return [p for p in get_points(server, tid) if p["state"] == "evaluated"]


def test_two_agents_share_one_specs_pass_and_a_changed_file_gets_a_fresh_one(
    live_server, start_agent, tmp_path
):
    data = tmp_path / "data"
    data.mkdir()
    sig, bkg = data / "ttbar.root", data / "dy.root"
    shutil.copy(TTBAR, sig)
    shutil.copy(DY, bkg)
    sb = sandbox_upload(live_server, {"train.py": PAYLOAD})
    tid = submit(
        live_server,
        {
            "evaluationExec": f"{PY} train.py",
            "sandbox": str(sb),
            "optimizer": "grid",
            "searchSpace": {"params": {"hidden": {"type": "int", "low": 1, "high": 3}}},
            "maxPoints": 3,
            "nParallelEvaluation": 1,
            "trainingFiles": [str(sig), str(bkg)],
        },
    )

    # machine A: the first job makes the specs pass and uploads it
    _run_one_job(live_server, start_agent, tmp_path, "a")
    (p1,) = _evaluated(live_server, tid)
    assert p1["metrics"]["specs"] == "computed" and p1["metrics"]["events"] == 701, p1
    (art,) = _specs_artifacts(live_server, tid)
    assert art["name"].startswith("specs-") and art["task_id"] == tid
    assert not (tmp_path / "b").exists()

    # machine B sees the same files with other mtimes (its own copies): the task's specs are used
    for f in (sig, bkg):
        st = f.stat()
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 3600 * 10**9))
    _run_one_job(live_server, start_agent, tmp_path, "b")
    p2 = [p for p in _evaluated(live_server, tid) if p["id"] != p1["id"]]
    assert [p["metrics"]["specs"] for p in p2] == ["shared"], p2
    cache_b = tmp_path / "b" / "cache"
    assert [f.name for f in cache_b.glob("shared-*.json")] == ["shared-" + art["name"].removeprefix("specs-")]
    assert len(list(cache_b.glob("specs-*.json"))) == 1  # adopted under machine B's own key
    assert [a["id"] for a in _specs_artifacts(live_server, tid)] == [art["id"]]  # nothing new uploaded
    shared = json.loads(next(cache_b.glob("specs-*.json")).read_text())
    assert shared["nevts"] == {str(sig): 200, str(bkg): 501}

    # the background file is replaced (same name, other content): a fresh pass, not the old specs
    shutil.copy(TTBAR, bkg)
    _run_one_job(live_server, start_agent, tmp_path, "b")
    pts = _evaluated(live_server, tid)
    assert len(pts) == 3, pts
    (p3,) = [p for p in pts if p["id"] not in (p1["id"], p2[0]["id"])]
    assert p3["metrics"]["specs"] == "computed" and p3["metrics"]["events"] == 400, p3
    # and those specs are the task's second artifact
    assert len(_specs_artifacts(live_server, tid)) == 2


def test_a_data_cache_the_agent_cannot_make_costs_the_sharing_not_the_job(live_server, start_agent, tmp_path):
    """PHPO_DATA_CACHE under a regular file: the agent cannot make the directory; the job still
    runs (its payload does not use phpo.data) and the agent says why specs are not shared."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    sb = sandbox_upload(
        live_server,
        {"p.py": "from phpo.evaluation_container import sdk\nsdk.report(float(len(sdk.training_files())))\n"},
    )
    tid = submit(
        live_server,
        {
            "evaluationExec": f"{PY} p.py",
            "sandbox": str(sb),
            "optimizer": "grid",
            "searchSpace": {"params": {"x": {"type": "int", "low": 1, "high": 1}}},
            "maxPoints": 1,
            "trainingFiles": [str(DY), str(TTBAR)],
        },
    )
    agent = start_agent(live_server, "--once", env={"PHPO_DATA_CACHE": str(blocker / "cache")})
    assert agent.wait(timeout=120) == 0, agent.log()[-4000:]
    (p,) = get_points(live_server, tid)
    assert p["state"] == "evaluated" and p["loss"] == 2.0, p
    assert "the task's specs are not shared for this job" in agent.log()
