"""The routes' side of uploads and downloads: the request's body streamed into the artifact
store and recorded by :mod:`phpo.server.services.uploads` (its database work in the thread
pool); a refused or failed record removes the stored file."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import Request
from phpo.schemas.artifacts import Artifact
from phpo.schemas.data_specs import SPECS_MAX_BYTES
from starlette.concurrency import run_in_threadpool

from ..auth.identity import Caller
from ..context import AppContext
from ..services import uploads


async def _receive(
    ctx: AppContext, request: Request, kind: str, name: str, limit: int | None = None
) -> tuple[str, int, str]:
    return await uploads.receive(
        ctx.store,
        request.stream(),
        request.headers.get("content-length"),
        kind,
        name,
        max_bytes=ctx.settings.max_upload_bytes,
        limit=limit,
    )


async def upload_sandbox(ctx: AppContext, request: Request, caller: Caller, name: str) -> Artifact:
    rel, size, sha = await _receive(ctx, request, "sandbox", name)
    return await run_in_threadpool(uploads.record_sandbox, ctx.db, caller, name, rel, size, sha)


async def upload_job_artifact(
    ctx: AppContext, request: Request, caller: Caller, job_id: int, kind: str, name: str, point_id: int | None
) -> Artifact:
    await run_in_threadpool(uploads.check_job, ctx.db, caller, job_id, kind, point_id, name)
    rel, size, sha = await _receive(ctx, request, kind, name, SPECS_MAX_BYTES if kind == "specs" else None)
    try:
        art, old_paths = await run_in_threadpool(
            uploads.record_job_artifact, ctx.db, job_id, kind, name, point_id, rel, size, sha
        )
    except BaseException:
        ctx.store.delete(rel)
        raise
    for path in old_paths:
        ctx.store.delete(path)
    return art


def task_specs(ctx: AppContext, caller: Caller, job_id: int) -> list[Artifact]:
    """The specs artifacts of the task of a job the caller holds."""
    return uploads.task_specs(ctx.db, caller, job_id)


def artifact_for_download(ctx: AppContext, caller: Caller, artifact_id: int) -> Any:
    """The artifact's row (``ArtifactRow``) when the caller may read it, else a 404."""
    return uploads.artifact_for_download(ctx.db, caller, artifact_id)


def open_artifact(ctx: AppContext, row: Any) -> Iterator[bytes]:
    return uploads.open_artifact(ctx.store, row)
