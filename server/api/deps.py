"""Typed dependencies of the routes: the app context, the database and the caller by role."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from phpo.schemas.api import Role

from ..auth.identity import Caller
from ..context import AppContext
from ..errors import Forbidden, Unauthorized
from ..repositories.tokens import lookup


def get_ctx(request: Request) -> AppContext:
    return request.app.state.ctx


Ctx = Annotated[AppContext, Depends(get_ctx)]


# declares the scheme in the OpenAPI document; the header is read below, so that a missing or
# malformed one gets this server's 401 body
_bearer = HTTPBearer(
    scheme_name="bearer",
    auto_error=False,
    description="a token made by `phpo server create-token` (roles user, agent, admin)",
)


def current_caller(
    request: Request,
    ctx: Ctx,
    _declared: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
) -> Caller:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "this call needs 'Authorization: Bearer <token>' (phpo server create-token makes one)",
            field="Authorization",
        )
    # looked up on every request, never cached: a revoked token is refused from the very next
    # request, by every server process on the database (one indexed read; see benchmarks/)
    with ctx.db.read() as s:
        caller = lookup(s, token.strip())
    if caller is None:
        raise Unauthorized("the bearer token is not valid (unknown or revoked)", field="Authorization")
    return caller


CurrentCaller = Annotated[Caller, Depends(current_caller)]


def _need(*roles: Role):
    def dep(caller: CurrentCaller) -> Caller:
        if caller.role not in roles:
            raise Forbidden(
                f"this call is for {' or '.join(r.value for r in roles)} tokens; "
                f"'{caller.name}' has role '{caller.role.value}'"
            )
        return caller

    return dep


UserCaller = Annotated[Caller, Depends(_need(Role.user, Role.admin))]
AgentCaller = Annotated[Caller, Depends(_need(Role.agent, Role.admin))]
AdminCaller = Annotated[Caller, Depends(_need(Role.admin))]
AnyCaller = CurrentCaller
