"""Paging and sorting helpers shared by the repositories."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from ..errors import InvalidInput

MAX_LIMIT = 1000


def check_page(limit: int, offset: int) -> None:
    if limit < 1 or limit > MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}, got {limit}", field="limit")
    if offset < 0:
        raise InvalidInput(f"offset must be 0 or more, got {offset}", field="offset")


def count(s: Session, stmt: Select) -> int:
    return s.execute(select(func.count()).select_from(stmt.order_by(None).subquery())).scalar_one()


def order_by(stmt: Select, sort: str | None, columns: dict[str, Any], default: str) -> Select:
    """``sort`` is a column name, ``-name`` for descending; unknown names are a 422."""
    key = sort or default
    desc = key.startswith("-")
    name = key.lstrip("-+")
    if name not in columns:
        raise InvalidInput(
            f"cannot sort by {name!r}; use one of {sorted(columns)} (prefix '-' for descending)", field="sort"
        )
    col = columns[name]
    return stmt.order_by(
        col.desc().nulls_last() if desc else col.asc().nulls_last(), *columns.get("_tiebreak", ())
    )
