"""``phpo pause`` stops new work only: a point that runs when its task is paused runs to its end
and its result counts; ``phpo resume`` goes on. A real server (short lease, so heartbeats come
every second) and a real agent."""

from __future__ import annotations

import time

import pytest
from conftest import run_phpo

from .agent_helpers import PY, base_spec, get_points, get_task, submit, wait_task, wait_until, write_payload

pytestmark = pytest.mark.slow

# runs until the test lets it go (the release file), at most 60 s
SLOW = """
import json, pathlib, time
p = json.load(open("input.json"))
marks = pathlib.Path({marks!r})
(marks / f"started-{{p['x']}}").touch()
deadline = time.monotonic() + 60
while not (marks / "release").exists() and time.monotonic() < deadline:
    time.sleep(0.1)
json.dump({{"status": 0, "loss": float(p["x"])}}, open("output.json", "w"))
"""


def test_pause_lets_the_running_point_finish_and_resume_goes_on(start_server, start_agent, tmp_path):
    server = start_server(None, "--lease-seconds", "3")  # a heartbeat every second
    marks = tmp_path / "marks"
    marks.mkdir()
    script = write_payload(tmp_path / "slow.py", SLOW.format(marks=str(marks)))
    tid = submit(server, base_spec(f"{PY} {script}", maxPoints=2))
    agent = start_agent(server)
    env = {"PHPO_URL": server.url, "PHPO_TOKEN": server.user_token}

    wait_until(lambda: list(marks.glob("started-*")), 30, "the first point to start", agent.log)
    assert "paused" in run_phpo("pause", str(tid), env=env).stdout
    # several heartbeats later the payload still runs (before: cancelled at the next heartbeat)
    time.sleep(3)
    (leased,) = [p for p in get_points(server, tid) if p["state"] == "leased"]
    assert "cancelled" not in agent.log()
    (marks / "release").touch()
    (point,) = wait_until(
        lambda: [p for p in get_points(server, tid) if p["state"] == "evaluated"],
        20,
        "the running point to finish while paused",
        agent.log,
    )
    assert point["id"] == leased["id"] and point["attempts"] == 1  # the same run, not a restart
    assert len(list(marks.glob("started-*"))) == 1
    # paused: nothing new starts
    time.sleep(1.5)
    assert len(list(marks.glob("started-*"))) == 1
    assert get_task(server, tid)["state"] == "paused"

    assert "running" in run_phpo("resume", str(tid), env=env).stdout
    t = wait_task(server, tid, timeout=60, agents=(agent,))
    assert t["state"] == "finished" and t["counts"]["evaluated"] == 2, t
    assert all(p["attempts"] == 1 for p in get_points(server, tid))
