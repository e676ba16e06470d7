"""Agent calls: acquire, heartbeat, results, complete, fail, artifact upload."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from phpo.schemas.artifacts import Artifact, ArtifactKind
from phpo.schemas.jobs import (
    AcquireRequest,
    CompleteRequest,
    FailRequest,
    HeartbeatRequest,
    HeartbeatResponse,
    Job,
    JobAck,
    PointResult,
)

from ...services import uploads
from ..deps import AgentCaller, Ctx

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post("/acquire", response_model=Job, responses={204: {"description": "no job for this agent now"}})
def acquire(body: AcquireRequest, ctx: Ctx, caller: AgentCaller):
    job = ctx.broker.acquire(caller, body)
    if job is None:
        return Response(status_code=204)
    return job


@router.post("/{job_id}/heartbeat", response_model=HeartbeatResponse)
def heartbeat(job_id: int, body: HeartbeatRequest, ctx: Ctx, caller: AgentCaller) -> HeartbeatResponse:
    return ctx.broker.heartbeat(caller, job_id, body)


@router.post("/{job_id}/points/{point_id}/result", response_model=JobAck)
def point_result(job_id: int, point_id: int, body: PointResult, ctx: Ctx, caller: AgentCaller) -> JobAck:
    return ctx.broker.point_result(caller, job_id, point_id, body)


@router.post("/{job_id}/complete", response_model=JobAck)
def complete(job_id: int, body: CompleteRequest, ctx: Ctx, caller: AgentCaller) -> JobAck:
    return ctx.broker.complete(caller, job_id, body)


@router.post("/{job_id}/fail", response_model=JobAck)
def fail(job_id: int, body: FailRequest, ctx: Ctx, caller: AgentCaller) -> JobAck:
    return ctx.broker.fail(caller, job_id, body)


@router.put("/{job_id}/artifacts/{kind}", response_model=Artifact, status_code=201)
async def put_artifact(job_id: int, kind: ArtifactKind, request: Request, ctx: Ctx, caller: AgentCaller,
                       name: str | None = None, point_id: int | None = None) -> Artifact:
    """Raw body. A checkpoint (``?point_id=`` required) replaces the point's previous one."""
    return await uploads.upload_job_artifact(ctx, request, caller, job_id, kind.value, name or kind.value, point_id)
