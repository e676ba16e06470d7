"""GET /health (no token): the database and the artifact store as they are, and which database
backs this server. 503 with the problems named when either is not usable."""

from __future__ import annotations

import gc
from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from phpo.schemas.api import Health

from ..deps import Ctx

router = APIRouter(tags=["health"])


def _version() -> str:
    try:
        return version("phpo")
    except PackageNotFoundError:  # pragma: no cover
        return "0+unknown"


@router.get(
    "/health",
    response_model=Health,
    responses={
        503: {
            "model": Health,
            "description": "the database or the artifact store is not usable: see problems",
        }
    },
)
def health(ctx: Ctx):
    problems = ctx.health.problems()
    body = Health(
        status="failing" if problems else "ok",
        version=_version(),
        database=ctx.db.backend,
        problems=problems,
        gc_frozen_objects=gc.get_freeze_count(),
    )
    if problems:
        return JSONResponse(status_code=503, content=body.model_dump(mode="json"))
    return body
