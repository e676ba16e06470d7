"""Agent calls: acquire, heartbeat, results, complete, fail, artifact upload."""

from __future__ import annotations

import time

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

from starlette.concurrency import run_in_threadpool

from ...auth.identity import Caller
from ...context import AppContext
from .. import uploads
from ..deps import AgentCaller, Ctx
from ..params import ArtifactName, Id, OptionalId

router = APIRouter(prefix="/jobs", tags=["jobs"])


async def lease(ctx: AppContext, caller: Caller, req: AcquireRequest) -> Job | None:
    """Acquire; with ``wait_s`` a long poll: while nothing is ready, sleep until something may
    have become ready (:class:`~phpo.server.services.work_signal.WorkSignal`) or the time is up."""
    deadline = time.monotonic() + min(req.wait_s, ctx.settings.max_acquire_wait)
    work = ctx.broker.work
    while True:
        generation = work.generation  # read before trying: a notification during the try is not lost
        job = await run_in_threadpool(ctx.broker.acquire, caller, req)
        left = deadline - time.monotonic()
        if job is not None or left <= 0:
            return job
        await work.wait(generation, left)


@router.post("/acquire", response_model=Job, responses={204: {"description": "no job for this agent now"}})
async def acquire(body: AcquireRequest, ctx: Ctx, caller: AgentCaller):
    job = await lease(ctx, caller, body)
    if job is None:
        return Response(status_code=204)
    return job


@router.post("/{job_id}/heartbeat", response_model=HeartbeatResponse)
def heartbeat(job_id: Id, body: HeartbeatRequest, ctx: Ctx, caller: AgentCaller) -> HeartbeatResponse:
    return ctx.broker.heartbeat(caller, job_id, body)


@router.post("/{job_id}/points/{point_id}/result", response_model=JobAck)
def point_result(job_id: Id, point_id: Id, body: PointResult, ctx: Ctx, caller: AgentCaller) -> JobAck:
    return ctx.broker.point_result(caller, job_id, point_id, body)


@router.post("/{job_id}/complete", response_model=JobAck)
async def complete(job_id: Id, body: CompleteRequest, ctx: Ctx, caller: AgentCaller) -> JobAck:
    """Ends the job; with ``next`` also leases the agent's next job (``next_job``), so a slot is
    refilled in the same round trip that reports its last result."""
    if body.next is not None:  # refused before the job ends, not after
        ctx.broker.check_site(caller, body.next)
    ack = await run_in_threadpool(ctx.broker.complete, caller, job_id, body)
    if body.next is not None:
        ack.next_job = await lease(ctx, caller, body.next)
    return ack


@router.post("/{job_id}/fail", response_model=JobAck)
def fail(job_id: Id, body: FailRequest, ctx: Ctx, caller: AgentCaller) -> JobAck:
    return ctx.broker.fail(caller, job_id, body)


@router.get("/{job_id}/specs", response_model=list[Artifact])
def task_specs(job_id: Id, ctx: Ctx, caller: AgentCaller) -> list[Artifact]:
    """The ``specs`` artifacts of the job's task (download each with ``GET /artifacts/{id}``).
    404 for a job that does not exist or was not leased with this token."""
    return uploads.task_specs(ctx, caller, job_id)


@router.put("/{job_id}/artifacts/{kind}", response_model=Artifact, status_code=201)
async def put_artifact(
    job_id: Id,
    kind: ArtifactKind,
    request: Request,
    ctx: Ctx,
    caller: AgentCaller,
    name: ArtifactName | None = None,
    point_id: OptionalId = None,
) -> Artifact:
    """Raw body. A checkpoint (``?point_id=`` required) replaces the point's previous one. Specs
    (``name=specs-<content key>.json``, at most 8 MiB) belong to the job's task; the first upload
    of a name wins and a second answers 409."""
    return await uploads.upload_job_artifact(
        ctx, request, caller, job_id, kind.value, name or kind.value, point_id
    )
