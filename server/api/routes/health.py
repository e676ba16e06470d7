"""GET /health (no token): liveness plus which database backs this server."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter
from phpo.schemas.api import Health
from sqlalchemy import text

from ..deps import Ctx

router = APIRouter(tags=["health"])


def _version() -> str:
    try:
        return version("phpo")
    except PackageNotFoundError:  # pragma: no cover
        return "0+unknown"


@router.get("/health", response_model=Health)
def health(ctx: Ctx) -> Health:
    with ctx.db.read() as s:
        s.execute(text("SELECT 1"))
    return Health(version=_version(), database=ctx.db.backend)
