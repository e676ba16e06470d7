"""Token rows: create, look up (by hash), list and revoke."""

from __future__ import annotations

from phpo.schemas.api import Role, TokenInfo
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..auth.identity import Caller
from ..auth.tokens import hash_token, new_token
from ..db.engine import aware, utcnow
from ..db.tables import TokenRow


def create_token(
    s: Session, name: str, role: Role | str, sites: list[str] | None = None, token: str | None = None
) -> tuple[str, TokenRow]:
    """A new token (shown once) and its row; ``sites`` only for agent tokens (None: any site).
    ``token``: register this value instead of a random one (e.g. a Kubernetes Secret's)."""
    token = token or new_token()
    row = TokenRow(
        name=name,
        role=str(Role(role)),
        token_hash=hash_token(token),
        created_at=utcnow(),
        revoked=False,
        sites=sorted(set(sites)) if sites else None,
    )
    s.add(row)
    s.flush()
    return token, row


def lookup(s: Session, token: str) -> Caller | None:
    """The caller of ``token``; None for an unknown or revoked one. One indexed read per request,
    no cache: a revocation counts from the very next request, in every server process."""
    row = find_by_value(s, token)
    if row is None or row.revoked:
        return None
    return Caller(
        name=row.name, role=Role(row.role), token_id=row.id, sites=frozenset(row.sites) if row.sites else None
    )


def find_by_value(s: Session, token: str) -> TokenRow | None:
    return s.execute(select(TokenRow).where(TokenRow.token_hash == hash_token(token))).scalar_one_or_none()


def token_info(row: TokenRow) -> TokenInfo:
    return TokenInfo(
        id=row.id,
        name=row.name,
        role=Role(row.role),
        sites=row.sites or None,
        created_at=aware(row.created_at),
        revoked=bool(row.revoked),
    )


def list_tokens(s: Session) -> list[TokenRow]:
    return list(s.execute(select(TokenRow).order_by(TokenRow.id)).scalars())


def find_tokens(s: Session, name_or_id: str | int) -> list[TokenRow]:
    """The token with id ``name_or_id`` (an int); for a string, the tokens of that name, or the
    one with that id when it is a number that no token is named."""
    if isinstance(name_or_id, int):
        row = s.get(TokenRow, name_or_id)
        return [row] if row is not None else []
    rows = list(
        s.execute(select(TokenRow).where(TokenRow.name == name_or_id).order_by(TokenRow.id)).scalars()
    )
    if not rows and name_or_id.isdigit() and len(name_or_id) < 19:
        row = s.get(TokenRow, int(name_or_id))
        rows = [row] if row is not None else []
    return rows


def revoke(rows: list[TokenRow]) -> None:
    for row in rows:
        row.revoked = True
