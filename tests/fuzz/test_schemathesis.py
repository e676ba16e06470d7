"""Schemathesis over the whole API inside ``make test``: no request may get a 5xx answer.

A small example count keeps this to seconds per database: the admin token (which may call
every route, user and agent ones alike) gets schemathesis' coverage phase (boundary values:
2^63, empty strings, control characters, ...) and a few fuzzed examples; the user and agent
tokens get a few fuzzed examples each. ``make fuzz`` (``tests/fuzz/runner.py``) runs the long,
time-bounded version.
"""

from __future__ import annotations

import pytest

from .runner import ROLES, fuzz_role, seed, table

PLAN = {"admin": ("coverage,fuzzing", 2), "user": ("fuzzing", 2), "agent": ("fuzzing", 2)}


@pytest.mark.slow
@pytest.mark.timeout(900)  # three schemathesis runs of up to 240 s each on a loaded machine
def test_no_request_gets_a_server_error(db_url, start_server):
    # the coverage phase asks acquire for wait_s = 20 many times: long polls of an idle server
    # would hold the workers for most of the run, so they are capped (what they do is tested)
    srv = start_server(db_url, "--max-acquire-wait", "0.2")
    tokens = {"user": srv.user_token, "agent": srv.agent_token, "admin": srv.admin_token}
    seed(srv.url, tokens)
    database = "postgresql" if db_url.startswith("postgresql") else "sqlite"
    results = [
        fuzz_role(
            srv.url,
            tokens[role],
            role,
            database,
            phases=PLAN[role][0],
            max_examples=PLAN[role][1],
            seed_value=16,
            workers=4,
            timeout=240,
        )
        for role in ROLES
    ]
    print(table(results))
    assert sum(r.cases for r in results) > 500, table(results)
    assert not any(r.server_errors or r.no_answer for r in results), table(results) + "\n" + srv.log()[-4000:]
