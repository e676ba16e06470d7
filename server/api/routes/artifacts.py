"""PUT /sandboxes (user) and GET /artifacts/{id} (streamed download)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from phpo.schemas.api import ErrorBody
from phpo.schemas.artifacts import Artifact
from starlette.concurrency import run_in_threadpool

from ...services import uploads
from ..deps import AnyCaller, Ctx, UserCaller

router = APIRouter(tags=["artifacts"])


@router.put("/sandboxes", response_model=Artifact, status_code=201)
async def put_sandbox(request: Request, ctx: Ctx, caller: UserCaller, name: str = "sandbox.tar.gz") -> Artifact:
    """The raw body is the sandbox tarball (the user's *.json *.py *.sh *.yaml files)."""
    return await uploads.upload_sandbox(ctx, request, caller, name)


@router.get("/artifacts/{artifact_id}", response_class=StreamingResponse, responses={
    404: {"model": ErrorBody, "description": "no such artifact, not the caller's, or its file is missing from "
                                             "the artifact store (code artifact_missing)"}})
async def get_artifact(artifact_id: int, ctx: Ctx, caller: AnyCaller) -> StreamingResponse:
    row = await run_in_threadpool(uploads.artifact_for_download, ctx, caller, artifact_id)
    chunks = await run_in_threadpool(uploads.open_artifact, ctx, row)
    safe = row.name.replace('"', "_")
    return StreamingResponse(
        chunks, media_type="application/octet-stream",
        headers={"Content-Length": str(row.size), "X-Checksum-Sha256": row.sha256, "ETag": f'"{row.sha256}"',
                 "Content-Disposition": f'attachment; filename="{safe}"'},
    )
