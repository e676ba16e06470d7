"""What the ``phpo`` commands say and exit with, against a real server and a real agent: the exit
codes tell success, a failed task, nothing to show, no server, a refused token, a timeout and
other refusals apart; points export whole; ``logs | head`` ends quietly.

The server, agent and user fixtures are those of test_cli_e2e (one server and agent per module).
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port, run_phpo
from test_cli_e2e import agent, server, user  # noqa: F401 - fixtures

from phpo.client import Client

pytestmark = pytest.mark.slow

PAYLOAD = """\
import json, sys
p = json.load(open("input.json"))
print("evaluating x =", p["x"], flush=True)
print("filler " * 20000)  # 140 kB of log: more than a pipe holds
if p["x"] < 0:
    sys.exit(3)
# "accuracy" is not one of status/loss/message/metrics: it is kept with the metrics
json.dump({"status": 0, "loss": (p["x"] - 0.3) ** 2, "accuracy": 1 - p["x"], "metrics": {"epochs": 3}},
          open("output.json", "w"))
"""


def _submit(env: dict, d: Path, low: float, high: float, *extra: str) -> int:
    (d / "payload.py").write_text(PAYLOAD)
    (d / "space.json").write_text(json.dumps({"x": [low, high]}))
    p = run_phpo(
        "submit",
        "--evaluationExec",
        f"{sys.executable} payload.py",
        "--searchSpaceFile",
        "space.json",
        "--optimizer",
        "random",
        "--nParallelEvaluation",
        "2",
        *extra,
        "--json",
        cwd=d,
        env=env,
    )
    return json.loads(p.stdout)["id"]


@pytest.fixture(scope="module")
def finished(server, agent, tmp_path_factory):  # noqa: F811
    """A task of 5 points that finished, and its user's env."""
    token = server.token("honest-finished", "user")
    env = {"PHPO_URL": server.url, "PHPO_TOKEN": token}
    tid = _submit(env, tmp_path_factory.mktemp("finished"), 0.0, 1.0, "--maxPoints", "5")
    w = run_phpo("wait", str(tid), "--poll", "0.3", "--quiet", env=env, check=False, timeout=180)
    assert w.returncode == 0, w.stdout + w.stderr
    return tid, env


def test_exit_codes_tell_the_causes_apart(server, agent, user, finished, tmp_path):  # noqa: F811
    tid, env = finished
    for cmd in (
        ["wait", str(tid)],
        ["show", str(tid)],
        ["best", str(tid)],
        ["logs", str(tid)],
        ["points", str(tid)],
    ):
        assert run_phpo(*cmd, env=env, check=False).returncode == 0, cmd

    # a task whose every point failed: failed, and every command says so with exit 1
    uenv, _ = user
    bad = _submit(uenv, tmp_path, -2.0, -1.0, "--maxPoints", "2", "--maxAttempts", "1")
    w = run_phpo("wait", str(bad), "--poll", "0.3", "--json", env=uenv, check=False, timeout=120)
    assert w.returncode == 1 and json.loads(w.stdout)["state"] == "failed"
    assert "no point was evaluated" in json.loads(w.stdout)["message"]
    b = run_phpo("best", str(bad), "--json", env=uenv, check=False)
    assert b.returncode == 1 and json.loads(b.stdout) == {"loss": None, "params": None}
    assert "failed" in b.stderr
    s = run_phpo("show", str(bad), env=uenv, check=False)
    assert s.returncode == 1 and "failed" in s.stdout

    # nothing to show: a task with no evaluated point yet, no logs yet, no such task or point
    with Client(server.url, uenv["PHPO_TOKEN"]) as c:
        # a site no agent serves: nothing runs it, whatever the timing
        idle = c.submit(
            evaluationExec="true", searchSpace={"x": [0.0, 1.0]}, maxPoints=100, sandbox=None, site="NOWHERE"
        )
        c.pause(idle.id)
    assert run_phpo("best", str(idle.id), env=uenv, check=False).returncode == 4
    assert run_phpo("best", str(idle.id), "--json", env=uenv, check=False).returncode == 4
    assert run_phpo("logs", str(idle.id), env=uenv, check=False).returncode == 4
    missing = run_phpo("show", "987654", env=uenv, check=False)
    assert missing.returncode == 4 and "987654" in missing.stderr
    point = run_phpo("logs", str(tid), "--point", "987654", env=env, check=False)
    assert point.returncode == 4 and "point 987654 is not a point of task" in point.stderr

    # timeout: 3; another refusal of the server (the task is cancelled already): 7
    assert run_phpo("wait", str(idle.id), "--timeout", "0.5", env=uenv, check=False).returncode == 3
    run_phpo("kill", str(idle.id), env=uenv)
    again = run_phpo("kill", str(idle.id), env=uenv, check=False)
    assert again.returncode == 7 and "HTTP 409" in again.stderr

    # a refused token: 6; no server answering, or none configured: 5
    wrong = run_phpo("show", str(tid), env={**env, "PHPO_TOKEN": "phpo_wrong"}, check=False)
    assert wrong.returncode == 6 and "HTTP 401" in wrong.stderr
    dead = {**env, "PHPO_URL": f"http://127.0.0.1:{free_port()}"}
    for cmd in ("wait", "show", "best", "logs"):
        p = run_phpo(cmd, str(tid), env=dead, check=False)
        assert p.returncode == 5 and "cannot reach" in p.stderr, (cmd, p.stderr)
    none = {"PHPO_URL": "", "PHPO_TOKEN": "", "XDG_CONFIG_HOME": str(tmp_path / "nocfg")}
    assert run_phpo("show", "1", env=none, check=False).returncode == 5

    # the codes are in `phpo --help`
    assert "exit codes" in run_phpo("--help", check=False).stdout


def test_show_json_pages_points_and_points_export_all(finished):
    tid, env = finished
    page = json.loads(run_phpo("show", str(tid), "--json", "--points", "2", env=env).stdout)
    assert page["id"] == tid and page["points_page"] == {"sort": "loss", "limit": 2, "offset": 0, "total": 5}
    losses = [p["loss"] for p in page["points"]]
    assert len(losses) == 2 and losses == sorted(losses)
    rest = json.loads(run_phpo("show", str(tid), "--json", "--points", "10", "--offset", "2", env=env).stdout)
    assert len(rest["points"]) == 3 and min(p["loss"] for p in rest["points"]) >= losses[-1]
    assert not {p["id"] for p in page["points"]} & {p["id"] for p in rest["points"]}

    everything = json.loads(run_phpo("points", str(tid), "--json", env=env).stdout)
    assert len(everything) == 5 and all(p["state"] == "evaluated" for p in everything)
    # evaluated at the first try: one attempt, not zero
    assert all(p["attempts"] == 1 for p in everything)
    # output.json's own keys beyond status/loss/message/metrics are kept, next to its metrics
    assert all(
        p["metrics"] == {"epochs": 3, "accuracy": pytest.approx(1 - p["params"]["x"])} for p in everything
    )

    rows = list(csv.DictReader(io.StringIO(run_phpo("points", str(tid), "--csv", env=env).stdout)))
    assert len(rows) == 5 and {"point", "state", "loss", "attempts", "x", "metric.accuracy"} <= set(rows[0])
    assert sorted(int(r["point"]) for r in rows) == sorted(p["id"] for p in everything)
    by_id = {p["id"]: p for p in everything}
    assert all(float(r["x"]) == by_id[int(r["point"])]["params"]["x"] for r in rows)


def test_logs_into_head_ends_without_a_traceback(finished, tmp_path):
    tid, env = finished
    err = tmp_path / "err.txt"
    exe = Path(sys.executable).with_name("phpo")
    p = subprocess.run(
        f"'{exe}' logs {tid} 2>'{err}' | head -n 1",
        shell=True,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )
    assert p.stdout.startswith("==> point ")
    assert "Traceback" not in err.read_text() and "BrokenPipe" not in err.read_text(), err.read_text()
