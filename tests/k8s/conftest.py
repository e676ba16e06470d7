"""The deployment tests use the chart fixtures of tests/helm (the helm binary)."""

from helm.conftest import helm  # noqa: F401 - the fixture, shared
