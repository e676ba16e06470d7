"""The server evaluates expressions any user wrote: their cost is capped (issue 16). Each case
below used to run (or grow memory) without a bound; now it is an ExpressionError at once."""

from __future__ import annotations

import time
import tracemalloc

import pytest
from phpo.server.workflows.expressions import (
    MAX_EXPRESSION_LENGTH,
    ExpressionError,
    evaluate,
)

NAMES = {"params": {"l": list(range(1000)), "s": "x" * 1000}}


@pytest.mark.parametrize(
    "expr, why",
    [
        ("[[params.l for a in params.l] for b in params.l]", "more than 100,000"),  # 10^6 lists of 1000
        ("[params.l for a in params.l for b in [0] * 9]", "more than 100,000"),  # 9000 references to 1000
        ("sum([params.l for a in params.l], [])", "more than 100,000"),  # would build 10^6 items
        ("str([params.l for a in params.l])", "more than 100,000"),  # a 5 MB string
        ("len([params.s for a in params.l])", "more than 100,000"),  # 10^6 characters
        ("1 + " * 900 + "1", f"at most {MAX_EXPRESSION_LENGTH}"),
    ],
)
def test_costly_expressions_are_refused_quickly_and_in_little_memory(expr, why):
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(ExpressionError, match=why):
            evaluate(expr, NAMES)
        took = time.monotonic() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert took < 5.0, f"{expr[:60]} took {took:.2f} s"
    assert peak < 50 * 2**20, f"{expr[:60]} peaked at {peak / 2**20:.0f} MB"


def test_ordinary_expressions_still_work():
    assert evaluate("sum([x * 2 for x in params.l[:10]])", NAMES) == 90
    assert evaluate("str(len(params.l)) + '!'", NAMES) == "1000!"
    assert evaluate("sorted(params.l, reverse=True)[0]", NAMES) == 999
    assert len(evaluate("[x for x in params.l]", NAMES)) == 1000
