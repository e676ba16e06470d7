"""Fixtures of the pruning tests: the agent as a real subprocess (the agent tests' fixture)."""

from tests.agent.conftest import start_agent  # noqa: F401
