"""Pruning with a real server and real agents: the pruner's decision stops hopeless points,
which end ``pruned`` (never failed, never retried, never leased again), shown in the API and
the CLI; bad pruner names and options are refused at submit, nothing stored."""

from __future__ import annotations

import json

import pytest
from conftest import run_phpo

from tests.agent.agent_helpers import PY, base_spec, get_points, submit, wait_task, write_payload

pytestmark = pytest.mark.slow

# x=0,1 are good curves; x>=2 are worse at every epoch: the median pruner stops them
ASKS = """
import sys, time
from phpo.evaluation_container import sdk
p = sdk.load_point()
for epoch in range(8):
    time.sleep(0.4)
    if not sdk.report_intermediate(epoch, p["x"] + 1.0 / (epoch + 1)):
        sys.exit(0)  # told to stop
sdk.report(p["x"] + 1.0 / 8)
"""

# never asks: reports through the plain file ("STEP VALUE" lines) and keeps a checkpoint
NEVER_ASKS = """
import json, os, time
p = json.load(open("input.json"))
for epoch in range(40):
    time.sleep(0.3)
    open("ckpt", "w").write(str(epoch))
    with open(os.environ["PHPO_INTERMEDIATE_FILE"], "a") as f:
        f.write(f"{epoch} {p['x'] + 1.0 / (epoch + 1)}\\n")
json.dump({"status": 0, "loss": p["x"] + 1.0 / 40}, open("output.json", "w"))
"""

SPACE = {"params": {"x": {"type": "int", "low": 0, "high": 3}}}


def _spec(script, **kw):
    return base_spec(
        f"{PY} {script}",
        searchSpace=SPACE,
        maxPoints=4,
        pruner="median",
        prunerOptions={"n_startup_trials": 2},
        **kw,
    )


def test_median_prunes_a_payload_that_asks(start_server, start_agent, tmp_path):
    server = start_server(None, "--lease-seconds", "1.5")  # a heartbeat every 0.5 s
    tid = submit(server, _spec(write_payload(tmp_path / "asks.py", ASKS)))
    agent = start_agent(server)
    t = wait_task(server, tid, timeout=90, agents=(agent,))
    assert t["state"] == "finished", t
    pts = {p["params"]["x"]: p for p in get_points(server, tid)}
    assert [pts[x]["state"] for x in range(4)] == ["evaluated", "evaluated", "pruned", "pruned"], pts
    for x in (2, 3):
        p = pts[x]
        assert p["attempts"] == 0 and "pruned by median" in p["error"], p
        last = max(p["intermediate"], key=lambda r: r["step"])
        assert p["loss"] == pytest.approx(last["value"]) and last["step"] < 7  # stopped early
    assert t["counts"]["pruned"] == 2 and t["counts"]["failed"] == 0
    env = {"PHPO_URL": server.url, "PHPO_TOKEN": server.user_token}
    assert "2 pruned" in run_phpo("show", str(tid), env=env).stdout
    # each point was leased once: one job per point, 4 jobs
    assert t["counts"]["jobs"] == 4


def test_agent_ends_a_payload_that_never_asks_and_keeps_its_checkpoint(start_server, start_agent, tmp_path):
    server = start_server(None, "--lease-seconds", "1.5")
    tid = submit(
        server,
        _spec(
            write_payload(tmp_path / "never.py", NEVER_ASKS), checkPointToSave="ckpt", checkPointInterval="1s"
        ),
    )
    agent = start_agent(server)
    t = wait_task(server, tid, timeout=150, agents=(agent,))
    assert t["state"] == "finished", t
    pts = {p["params"]["x"]: p for p in get_points(server, tid)}
    assert pts[2]["state"] == "pruned" and pts[3]["state"] == "pruned", pts
    assert max(r["step"] for r in pts[2]["intermediate"]) < 39  # ended by the agent, not run to the end
    assert "stopping the payload (pruned)" in agent.log()
    with server.client() as c:
        arts = c.get(f"/tasks/{tid}/artifacts", params={"kind": "checkpoint", "limit": 100}).json()["items"]
    assert any(a["point_id"] == pts[2]["id"] for a in arts), arts


@pytest.mark.parametrize(
    "spec, field",
    [
        ({"pruner": "bogus"}, "pruner"),
        ({"pruner": "median", "prunerOptions": {"n_warmup": 5}}, "prunerOptions"),
        ({"pruner": "asha", "prunerOptions": {"reduction_factor": 1}}, "prunerOptions"),
        ({"pruner": "percentile"}, "prunerOptions"),  # percentile is required
        ({"pruner": "median", "directions": ["minimize", "maximize"]}, "prunerObjective"),
        (
            {"pruner": "median", "directions": ["minimize", "maximize"], "prunerObjective": "acc"},
            "prunerObjective",
        ),
    ],
)
def test_bad_pruner_refused_naming_the_field(live_server, spec, field):
    with live_server.client() as c:
        before = len(c.get("/tasks").json()["items"])
        r = c.post("/tasks", json=base_spec("true", **spec))
        assert r.status_code == 422, r.text
        assert field in r.text
        assert len(c.get("/tasks").json()["items"]) == before


# upstream's steering file format: %IN holds [[params, loss], ...]; one new x per call, in order
STEER = """
import json, sys
inp, out, num, mx, log = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
points = json.load(open(inp))["points"]
with open(log, "a") as f:
    f.write(json.dumps(points) + "\\n")
json.dump([{"x": i} for i in range(len(points), min(len(points) + num, mx))], open(out, "w"))
"""


def test_external_steering_task_prunes_and_its_steering_reads_the_last_value(
    start_server, start_agent, tmp_path
):
    """A task steered by the user's own script (``--steeringExec``) prunes as a built-in one, and
    the script's next ``%IN`` gives a pruned point its last intermediate value as its loss."""
    server = start_server(None, "--lease-seconds", "1.5")
    steer, log = write_payload(tmp_path / "steer.py", STEER), tmp_path / "seen.jsonl"
    spec = base_spec(
        f"{PY} {write_payload(tmp_path / 'asks.py', ASKS)}",
        searchSpace={"x": {"method": "uniformint", "dimension": {"low": 0, "high": 4}}},
        maxPoints=5,
        nParallelEvaluation=1,
        steeringExec=f"{PY} {steer} %IN %OUT %NUM_POINTS %MAX_POINTS {log}",
        pruner="median",
        prunerOptions={"n_startup_trials": 2},
    )
    spec.pop("optimizer")
    tid = submit(server, spec)
    agent = start_agent(server)
    t = wait_task(server, tid, timeout=120, agents=(agent,))
    assert t["state"] == "finished", t
    pts = {p["params"]["x"]: p for p in get_points(server, tid)}
    assert [pts[x]["state"] for x in range(5)] == ["evaluated", "evaluated", "pruned", "pruned", "pruned"], (
        pts
    )
    assert t["counts"]["pruned"] == 3 and t["counts"]["failed"] == 0, t
    # the last steering call (for x=4) saw x=2 and x=3 pruned, each with its last value as loss
    seen = {row[0]["x"]: row[1] for row in json.loads(log.read_text().splitlines()[-1])}
    for x in (2, 3):
        last = max(pts[x]["intermediate"], key=lambda r: r["step"])
        assert seen[x] == pytest.approx(last["value"]) and last["step"] < 7, (seen, pts[x])
