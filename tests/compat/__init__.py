"""Compatibility with upstream PanDA/iDDS, against the real upstream tools (a package, so its conftest does not shadow tests/conftest.py)."""
