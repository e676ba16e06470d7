"""Token rows: create and look up (by hash)."""

from __future__ import annotations

from phpo.schemas.api import Role
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..auth.identity import Caller
from ..auth.tokens import hash_token, new_token
from ..db.engine import utcnow
from ..db.tables import TokenRow


def create_token(s: Session, name: str, role: Role | str) -> str:
    token = new_token()
    s.add(TokenRow(name=name, role=str(Role(role)), token_hash=hash_token(token), created_at=utcnow(), revoked=False))
    return token


def lookup(s: Session, token: str) -> Caller | None:
    row = s.execute(select(TokenRow).where(TokenRow.token_hash == hash_token(token))).scalar_one_or_none()
    if row is None or row.revoked:
        return None
    return Caller(name=row.name, role=Role(row.role))
