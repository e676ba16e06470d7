"""Tests of the evaluation agent (a package, so its conftest does not shadow tests/conftest.py)."""
