"""Server tests: every server started by a test must leave no traceback in its log (a crash in
a background thread - reaper, manager - answers no request, so only the log shows it)."""

from __future__ import annotations

import pytest


@pytest.fixture
def start_server(start_server):
    started = []

    def _start(*args, **kw):
        srv = start_server(*args, **kw)
        started.append(srv)
        return srv

    yield _start
    for srv in started:
        srv.stop()  # a clean shutdown is part of the check
        log = srv.log()
        assert "Traceback" not in log, f"server log has a traceback:\n{log[-6000:]}"
