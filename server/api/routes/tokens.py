"""GET /me and POST /tokens (admin)."""

from __future__ import annotations

from fastapi import APIRouter
from phpo.schemas.api import Me, TokenCreate, TokenCreated

from ...repositories.tokens import create_token
from ..deps import AdminCaller, AnyCaller, Ctx

router = APIRouter(tags=["auth"])


@router.get("/me", response_model=Me)
def me(caller: AnyCaller) -> Me:
    return Me(name=caller.name, role=caller.role)


@router.post("/tokens", response_model=TokenCreated, status_code=201)
def new_token(body: TokenCreate, ctx: Ctx, _admin: AdminCaller) -> TokenCreated:
    with ctx.db.write() as s:
        token = create_token(s, body.name, body.role)
    return TokenCreated(name=body.name, role=body.role, token=token)
