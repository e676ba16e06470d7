"""GET /me; POST /tokens, GET /tokens and POST /tokens/{id}/revoke (admin)."""

from __future__ import annotations

from fastapi import APIRouter
from phpo.schemas.api import Me, TokenCreate, TokenCreated, TokenInfo

from ...errors import NotFound
from ...repositories.tokens import create_token, find_tokens, list_tokens, revoke, token_info
from ..deps import AdminCaller, AnyCaller, Ctx
from ..params import Id

router = APIRouter(tags=["auth"])


@router.get("/me", response_model=Me, response_model_exclude_none=True)
def me(caller: AnyCaller) -> Me:
    return Me(name=caller.name, role=caller.role, sites=sorted(caller.sites) if caller.sites else None)


@router.post("/tokens", response_model=TokenCreated, status_code=201)
def new_token(body: TokenCreate, ctx: Ctx, _admin: AdminCaller) -> TokenCreated:
    """A new token; ``sites`` scopes an agent token to those sites (an acquire for another site
    answers 403)."""
    with ctx.db.write() as s:
        token, row = create_token(s, body.name, body.role, body.sites)
        return TokenCreated(id=row.id, name=row.name, role=body.role, sites=row.sites or None, token=token)


@router.get("/tokens", response_model=list[TokenInfo])
def tokens(ctx: Ctx, _admin: AdminCaller) -> list[TokenInfo]:
    with ctx.db.read() as s:
        return [token_info(r) for r in list_tokens(s)]


@router.post("/tokens/{token_id}/revoke", response_model=TokenInfo)
def revoke_token(token_id: Id, ctx: Ctx, _admin: AdminCaller) -> TokenInfo:
    """Revoke a token: refused from the next request on, by every server on the database (the
    jobs it holds stay leased until their lease runs out, then go back to the queue)."""
    with ctx.db.write() as s:
        rows = find_tokens(s, token_id)
        if not rows:
            raise NotFound(f"token {token_id} does not exist (GET /tokens lists them)", field="token_id")
        revoke(rows)
        return token_info(rows[0])
