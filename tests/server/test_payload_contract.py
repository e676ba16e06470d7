"""The payload contract is stated once (phpo.schemas.payload, phpo.schemas.upstream,
docs/payloads.md): ``%SEGMENT_NAME`` is substituted by the server alone, for every task, and the
agent, ``phpo run-local`` and the SDK use the same names."""

from __future__ import annotations

import inspect

from phpo.evaluation_container import agent, run_local, sdk
from phpo.schemas import payload
from phpo.schemas.upstream import evaluation_command

from .helpers import create_task, points, wait_until


def test_the_server_substitutes_segment_name_in_every_job(db_url, start_server):
    """Before, a task without segments got ``%SEGMENT_NAME`` unsubstituted from the server and
    the agent substituted it a second time, on its side; now the job holds the command as it runs."""
    srv = start_server(db_url)
    with srv.client() as c:
        t = create_task(c, maxPoints=1, evaluationExec="python train.py --seg=%SEGMENT_NAME.")
        wait_until(lambda: len(points(c, t["id"])) == 1, what="the point")
    with srv.client(srv.agent_token) as a:
        job = a.post("/jobs/acquire", json={"agent": "a", "site": "s"}).json()
    assert job["evaluation"]["exec"] == "python train.py --seg=."


def test_segment_name_is_substituted_as_plain_text():
    assert (
        evaluation_command('sh -c "run %SEGMENT_NAME/%SEGMENT_NAME"', "photons")
        == 'sh -c "run photons/photons"'
    )
    assert evaluation_command("run %SEGMENT_NAME", "") == "run "


def test_the_agent_runs_the_command_it_is_given():
    """The agent no longer substitutes placeholders of an evaluation: the server did."""
    assert "SEGMENT_NAME" not in inspect.getsource(agent)


def test_agent_run_local_and_sdk_share_the_names():
    for module in (agent, run_local, sdk):
        src = inspect.getsource(module)
        assert '"PHPO_' not in src, f"{module.__name__} restates a PHPO_* name"
    assert sdk.ENV_INPUT is payload.ENV_INPUT and agent.CONTROL_FILE is payload.CONTROL_FILE
