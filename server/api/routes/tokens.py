"""GET /me; POST /tokens, GET /tokens and POST /tokens/{id}/revoke (admin)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from phpo.schemas.api import ErrorBody, Me, TokenCreate, TokenCreated, TokenInfo

from ...errors import NotFound
from ...repositories.tokens import create_token, find_tokens, list_tokens, revoke, token_info
from ..deps import AdminCaller, AnyCaller, Ctx

router = APIRouter(tags=["auth"])

_ERRORS = {401: {"model": ErrorBody, "description": "no token, or an unknown or revoked one"},
           403: {"model": ErrorBody, "description": "not an admin token"}}


@router.get("/me", response_model=Me, response_model_exclude_none=True, responses={401: _ERRORS[401]})
def me(caller: AnyCaller) -> Me:
    return Me(name=caller.name, role=caller.role, sites=sorted(caller.sites) if caller.sites else None)


@router.post("/tokens", response_model=TokenCreated, status_code=201,
             responses={**_ERRORS, 422: {"model": ErrorBody, "description": "a field is invalid"}})
def new_token(body: TokenCreate, ctx: Ctx, _admin: AdminCaller) -> TokenCreated:
    """A new token; ``sites`` scopes an agent token to those sites (an acquire for another site
    answers 403)."""
    with ctx.db.write() as s:
        token, row = create_token(s, body.name, body.role, body.sites)
        return TokenCreated(id=row.id, name=row.name, role=body.role, sites=row.sites or None, token=token)


@router.get("/tokens", response_model=list[TokenInfo], responses=_ERRORS)
def tokens(ctx: Ctx, _admin: AdminCaller) -> list[TokenInfo]:
    with ctx.db.read() as s:
        return [token_info(r) for r in list_tokens(s)]


@router.post("/tokens/{token_id}/revoke", response_model=TokenInfo,
             responses={**_ERRORS, 404: {"model": ErrorBody, "description": "no token with this id"}})
def revoke_token(token_id: Annotated[int, Path(ge=1, le=2**63 - 1)], ctx: Ctx, _admin: AdminCaller) -> TokenInfo:
    """Revoke a token: refused from the next request on, by every server on the database (the
    jobs it holds stay leased until their lease runs out, then go back to the queue)."""
    with ctx.db.write() as s:
        rows = find_tokens(s, token_id)
        if not rows:
            raise NotFound(f"token {token_id} does not exist (GET /tokens lists them)", field="token_id")
        revoke(rows)
        return token_info(rows[0])
