"""The SQL of ``/health`` (services/health.py): the database answers a statement."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session


def ping(s: Session) -> None:
    """One round trip to the database; raises whatever the driver raises when it does not answer."""
    s.execute(text("SELECT 1"))
