"""Fixtures of the web view, plot and notebook tests: per test module one real server, one real
agent and the finished tasks every test of the module reads (see ui_helpers)."""

from __future__ import annotations

import pytest
from conftest import LiveServer, free_port

from workflows.conftest import start_agent, stop_agent

from .ui_helpers import Stack, finished_tasks, write_payload


def make_stack(tmp_path_factory, *server_args: str) -> tuple[Stack, object]:
    d = tmp_path_factory.mktemp("ui-server")
    port = free_port()
    server = LiveServer(
        url=f"http://127.0.0.1:{port}",
        port=port,
        data_dir=d,
        database_url=None,
        args=["--manager-interval", "0.3", *server_args],
    )
    server.start()
    try:
        work = tmp_path_factory.mktemp("ui-work")
        (work / "agent").mkdir()
        agent = start_agent(server, work / "agent", slots=3)
    except BaseException:
        server.stop()
        raise
    stack = Stack(server=server, payloads=write_payload(work / "payload"), token=server.user_token, work=work)
    return stack, agent


@pytest.fixture(scope="module")
def bare_stack(tmp_path_factory):
    """The server and the agent, no task yet."""
    s, agent = make_stack(tmp_path_factory)
    try:
        yield s
    finally:
        stop_agent(agent)
        s.server.stop()


@pytest.fixture(scope="module")
def stack(bare_stack):
    """With the finished tasks of ui_helpers.finished_tasks."""
    return finished_tasks(bare_stack)
