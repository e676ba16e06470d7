"""A task no connected agent can serve says why in ``phpo show`` and ``phpo wait``, instead of
waiting without a word (upstream's tasks wait in a brokerage queue that names its reason too)."""

from __future__ import annotations

from conftest import run_phpo
from server.helpers import acquire, create_task, task, wait_until


def test_show_and_wait_name_the_site_no_agent_serves(live_server):
    with live_server.client() as c, live_server.client(live_server.agent_token) as a:
        tid = create_task(c, site="NOWHERE", maxPoints=1)["id"]
        wait_until(lambda: task(c, tid)["counts"]["ready"] == 1, what="a ready point")
        assert acquire(a, site="local") is None  # an agent is connected, at another site
    env = {"PHPO_URL": live_server.url, "PHPO_TOKEN": live_server.user_token}
    show = run_phpo("show", str(tid), env=env)
    assert "waiting for an agent:" in show.stdout and "--site NOWHERE" in show.stdout, show.stdout
    assert "the 1 agent(s) seen are at local" in " ".join(show.stdout.split())
    wait = run_phpo("wait", str(tid), "--timeout", "1", "--poll", "0.2", env=env, check=False)
    assert "--site NOWHERE" in wait.stderr + wait.stdout, (wait.stdout, wait.stderr)
