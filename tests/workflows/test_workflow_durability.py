"""The engine keeps nothing in memory: a server killed (-9) mid-workflow continues exactly where it
was when it comes back, and the same engine runs on PostgreSQL."""

from __future__ import annotations

import time

import pytest
from conftest import LiveServer, free_port

from .conftest import start_agent, stop_agent
from .wf_helpers import User, by_path, hpo, job, tasks_of, write_payloads

pytestmark = pytest.mark.slow


def _server(tmp_path, database_url=None) -> LiveServer:
    port = free_port()
    d = tmp_path / "server"
    d.mkdir()
    s = LiveServer(
        url=f"http://127.0.0.1:{port}",
        port=port,
        data_dir=d,
        database_url=database_url,
        args=["--manager-interval", "0.3", "--lease-seconds", "10"],
    )
    s.start()
    return s


def test_server_restart_mid_workflow_continues_where_it_was(tmp_path):
    server = _server(tmp_path)
    agent = start_agent(server, tmp_path, slots=2)
    try:
        user = User(server, server.user_token)
        payloads = write_payloads(tmp_path / "payloads")
        definition = {
            "name": "durable",
            "nodes": [
                hpo("search", max_points=4, sleep=0.7),
                {
                    "name": "again",
                    "kind": "loop",
                    "max_iterations": 2,
                    "while": True,
                    "nodes": [
                        job("use", inputs={"value": "${{ nodes.search.best.params.x }}", "sleep": 0.3})
                    ],
                },
            ],
        }
        wid = user.submit(definition, payloads).id
        # kill -9 while the HPO node's task is half done
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            search = by_path(user.get(wid))["search"]
            if search.progress is not None and search.progress.evaluated >= 1:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"the search never got going:\n{server.log()[-3000:]}")
        task_before = search.task_id
        server.kill()
        server.start()
        wf = user.wait(wid, timeout=90, agent_log=tmp_path / "agent.log")
        assert wf.state.value == "succeeded", wf.message
        nodes = by_path(wf)
        assert nodes["search"].task_id == task_before  # the same task went on, none was started again
        assert nodes["search"].results["best"]["params"]["x"] == 2
        assert [n.results["outputs"]["value"] for n in nodes["again"].children] == [2, 2]
        # every node ran exactly once: one task per node, none started twice after the restart
        node_tasks = sorted(n.task_id for n in nodes.values() if n.task_id is not None)
        assert sorted(t["id"] for t in tasks_of(user)) == node_tasks and len(node_tasks) == 3
        assert nodes["search"].results["counts"]["evaluated"] == 4
    finally:
        stop_agent(agent)
        server.stop()


@pytest.mark.postgres
def test_workflow_runs_on_postgresql(tmp_path, pg_url):
    import uuid

    import psycopg
    from conftest import PG_ADMIN_DSN

    name = f"phpo_wf_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    server = _server(tmp_path, pg_url.rsplit("/", 1)[0] + "/" + name)
    agent = start_agent(server, tmp_path, slots=2)
    try:
        user = User(server, server.user_token)
        payloads = write_payloads(tmp_path / "payloads")
        definition = {
            "name": "pg",
            "params": {"items": [1, 2]},
            "nodes": [
                job("fan", for_each="${{ params.items }}", inputs={"value": "${{ item }}"}),
                job("sum", inputs={"value": "${{ sum([r.outputs.double for r in nodes.fan.results]) }}"}),
            ],
            "outputs": {"total": "${{ nodes.sum.outputs.value }}"},
        }
        wf = user.wait(user.submit(definition, payloads).id, timeout=60, agent_log=tmp_path / "agent.log")
        assert wf.state.value == "succeeded", wf.message
        assert wf.outputs == {"total": 6}
    finally:
        stop_agent(agent)
        server.stop()
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
