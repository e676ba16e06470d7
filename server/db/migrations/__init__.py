"""Alembic migrations; a package so that wheels ship env.py, script.py.mako and versions/."""
