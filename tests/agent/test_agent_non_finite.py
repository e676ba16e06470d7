"""A payload that reports NaN and Infinity (as training loops do when they diverge) must not cost
its job: the agent sends them as null with a note, the heartbeats keep the lease, and the valid
result is taken. On PostgreSQL, NaN in a heartbeat used to be a 500 on every beat, the lease was
lost and the result refused (409)."""

from __future__ import annotations

from .agent_helpers import PY, base_spec, get_points, submit, wait_task, write_payload

NAN_PAYLOAD = """\
import math, time
from phpo.evaluation_container import sdk

p = sdk.load_point()
sdk.report_intermediate(1, float("nan"))
sdk.report_intermediate(2, float("inf"))
sdk.report_intermediate(3, 0.5)
time.sleep(4)  # longer than the lease: only heartbeats that get through keep it
sdk.report(float(p["x"]), metrics={"acc": float("nan"), "curve": [1.0, float("-inf")]})
"""


def test_nan_intermediates_and_metrics_are_sent_as_null_and_the_result_is_kept(
    db_url, start_server, start_agent, tmp_path
):
    srv = start_server(db_url, "--lease-seconds", "2.5")
    script = write_payload(tmp_path / "nan.py", NAN_PAYLOAD)
    tid = submit(srv, base_spec(f"{PY} {script}", maxPoints=1, maxAttempts=1))
    agent = start_agent(srv, "--once")
    t = wait_task(srv, tid, timeout=90, agents=(agent,))
    assert t["state"] == "finished", t
    (p,) = get_points(srv, tid)
    assert p["state"] == "evaluated" and p["attempts"] <= 1, p
    assert p["loss"] == float(p["params"]["x"])
    assert p["metrics"] == {"acc": None, "curve": [1.0, None]}, p["metrics"]
    assert [(v["step"], v["value"]) for v in p["intermediate"]] == [(1, None), (2, None), (3, 0.5)], p
    log = agent.log()
    assert "sent as null" in log and "complete acknowledged" in log and "refused" not in log, log[-3000:]
    assert "Traceback" not in srv.log(), srv.log()[-3000:]
