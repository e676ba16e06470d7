"""Alembic revision scripts (a package so setuptools' find_packages ships them)."""
