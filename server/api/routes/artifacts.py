"""PUT /sandboxes (user) and GET /artifacts/{id} (streamed download)."""

from __future__ import annotations

import re
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from phpo.schemas.artifacts import Artifact
from starlette.concurrency import run_in_threadpool

from .. import uploads
from ..deps import AnyCaller, Ctx, UserCaller
from ..params import ArtifactName, Id

router = APIRouter(tags=["artifacts"])


@router.put("/sandboxes", response_model=Artifact, status_code=201)
async def put_sandbox(
    request: Request, ctx: Ctx, caller: UserCaller, name: ArtifactName = "sandbox.tar.gz"
) -> Artifact:
    """The raw body is the sandbox tarball (the user's *.json *.py *.sh *.yaml files)."""
    return await uploads.upload_sandbox(ctx, request, caller, name)


@router.get("/artifacts/{artifact_id}", response_class=StreamingResponse)
async def get_artifact(artifact_id: Id, ctx: Ctx, caller: AnyCaller) -> StreamingResponse:
    """The artifact's bytes. 404 when there is no such artifact, it is not the caller's (for an
    agent token: not the sandbox, a checkpoint or an upload of a job it holds), or its file is
    missing from the artifact store (code ``artifact_missing``, naming the file)."""
    row = await run_in_threadpool(uploads.artifact_for_download, ctx, caller, artifact_id)
    chunks = await run_in_threadpool(uploads.open_artifact, ctx, row)
    return StreamingResponse(
        chunks,
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(row.size),
            "X-Checksum-Sha256": row.sha256,
            "ETag": f'"{row.sha256}"',
            "Content-Disposition": content_disposition(row.name),
        },
    )


def content_disposition(name: str) -> str:
    """``attachment`` with the name as an ASCII ``filename`` and, when it is not plain ASCII, the
    exact name as RFC 5987 ``filename*`` (HTTP headers are Latin-1: a raw non-ASCII name cannot be
    sent, and a CR/LF stored before names were checked must not break the header)."""
    fallback = re.sub(r'[^\x20-\x7e]|["\\]', "_", name) or "artifact"
    if fallback == name:
        return f'attachment; filename="{name}"'
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
