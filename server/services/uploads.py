"""Receiving uploads (sandboxes, checkpoints, logs, metrics): streamed to the artifact store,
size-limited, checksummed; the row is written only after the bytes are safely stored, and a
refused upload leaves neither a row nor a file."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from fastapi import Request
from phpo.schemas.artifacts import Artifact
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from ..auth.identity import Caller
from ..context import AppContext
from ..db.engine import utcnow
from ..db.tables import ArtifactRow, JobRow, PointRow, TaskRow
from ..errors import InvalidInput, LeaseLost, NotFound, TooLarge
from ..repositories.artifacts import artifact_to_schema

log = logging.getLogger(__name__)


async def receive(ctx: AppContext, request: Request, kind: str, name: str) -> tuple[str, int, str]:
    limit = ctx.settings.max_upload_bytes
    cl = request.headers.get("content-length")
    if cl and cl.isdigit() and int(cl) > limit:
        raise TooLarge(f"the upload ({int(cl) / 1048576:.1f} MB) is larger than the server's limit of "
                       f"{limit / 1048576:g} MB (phpo server --max-upload-mb)", field="body")
    rel = ctx.store.new_path(kind, name)
    size, sha = await ctx.store.write_stream(rel, request.stream(), limit)
    return rel, size, sha


async def upload_sandbox(ctx: AppContext, request: Request, caller: Caller, name: str) -> Artifact:
    rel, size, sha = await receive(ctx, request, "sandbox", name)

    def record() -> Artifact:
        with ctx.db.write() as s:
            row = ArtifactRow(kind="sandbox", name=name, size=size, sha256=sha, path=rel, owner=caller.name,
                              created_at=utcnow())
            s.add(row)
            s.flush()
            return artifact_to_schema(row)

    return await run_in_threadpool(record)


def _check_job(ctx: AppContext, caller: Caller, job_id: int, kind: str, point_id: int | None) -> None:
    with ctx.db.read() as s:
        job = s.get(JobRow, job_id)
        if job is None or not (caller.is_admin or job.holder == caller.holder):
            raise NotFound(f"job {job_id} does not exist (or was not leased with this token)", field="job_id")
        if point_id is not None and point_id not in (job.point_ids or []):
            raise NotFound(f"point {point_id} is not part of job {job_id}", field="point_id")
        if kind == "checkpoint":
            if point_id is None:
                raise InvalidInput("a checkpoint belongs to a point: give ?point_id=", field="point_id")
            if job.state != "running":
                raise LeaseLost(f"job {job_id} is {job.state}: its checkpoints are no longer taken", field="job_id")


async def upload_job_artifact(ctx: AppContext, request: Request, caller: Caller, job_id: int, kind: str,
                              name: str, point_id: int | None) -> Artifact:
    await run_in_threadpool(_check_job, ctx, caller, job_id, kind, point_id)
    rel, size, sha = await receive(ctx, request, kind, name)
    old_paths: list[str] = []

    def record() -> Artifact:
        with ctx.db.write() as s:
            job = s.execute(select(JobRow).where(JobRow.id == job_id).with_for_update()).scalar_one()
            owner = s.execute(select(TaskRow.owner).where(TaskRow.id == job.task_id)).scalar_one()
            row = ArtifactRow(kind=kind, name=name, size=size, sha256=sha, path=rel, owner=owner,
                              task_id=job.task_id, point_id=point_id, job_id=job.id, created_at=utcnow())
            if kind == "checkpoint":
                p = s.execute(select(PointRow).where(PointRow.id == point_id).with_for_update()).scalar_one()
                if job.state != "running" or p.job_id != job.id or p.state != "leased":
                    raise LeaseLost(f"job {job_id} no longer holds point {point_id}; checkpoint not kept",
                                    field="job_id")
                s.add(row)
                s.flush()
                # keep only the newest checkpoint of a point: the next attempt resumes from it
                if p.checkpoint_artifact_id is not None:
                    old = s.get(ArtifactRow, p.checkpoint_artifact_id)
                    if old is not None:
                        old_paths.append(old.path)
                        s.delete(old)
                p.checkpoint_artifact_id = row.id
            else:
                s.add(row)
                s.flush()
            return artifact_to_schema(row)

    try:
        art = await run_in_threadpool(record)
    except BaseException:
        ctx.store.delete(rel)
        raise
    for path in old_paths:
        ctx.store.delete(path)
    return art


def _agent_may_read(s: Session, caller: Caller, row: ArtifactRow) -> bool:
    """An agent token reads only what the jobs it holds need: the sandbox of their task, the
    checkpoints of their points, and what it uploaded for them. Anything else (another user's
    sandbox, other jobs' logs and metrics) is not its business, whoever's token it is."""
    jobs = s.execute(select(JobRow.id, JobRow.task_id, JobRow.point_ids)
                     .where(JobRow.holder == caller.holder, JobRow.state == "running")).all()
    if any(row.job_id == job_id for job_id, _, _ in jobs):
        return True
    if row.kind == "checkpoint":
        return any(row.task_id == task_id and row.point_id in (points or []) for _, task_id, points in jobs)
    if row.kind == "sandbox" and jobs:
        specs = s.execute(select(TaskRow.spec).where(TaskRow.id.in_({task_id for _, task_id, _ in jobs}))).scalars()
        return any(str((spec or {}).get("sandbox")) == str(row.id) for spec in specs)
    return False


def artifact_for_download(ctx: AppContext, caller: Caller, artifact_id: int) -> ArtifactRow:
    with ctx.db.read() as s:
        row = s.get(ArtifactRow, artifact_id)
        if row is None:
            raise NotFound(f"artifact {artifact_id} does not exist (or is not yours)", field="artifact_id")
        if caller.is_admin:
            return row
        if caller.role.value == "agent":
            if not _agent_may_read(s, caller, row):
                raise NotFound(f"artifact {artifact_id} does not exist (or is not the sandbox, a checkpoint or "
                               "an upload of a job this token holds)", field="artifact_id")
            return row
        owner = row.owner
        if row.task_id is not None:
            owner = s.execute(select(TaskRow.owner).where(TaskRow.id == row.task_id)).scalar_one_or_none()
        if owner != caller.name:
            raise NotFound(f"artifact {artifact_id} does not exist (or is not yours)", field="artifact_id")
        return row


def open_artifact(ctx: AppContext, row: ArtifactRow) -> Iterator[bytes]:
    """The artifact's bytes; its file missing from the store is a 404 naming both (never an
    empty 200, which a client would take for a torn download and retry)."""
    try:
        return ctx.store.open_stream(row.path)
    except FileNotFoundError:
        log.error("artifact %d (%s): its file %s is missing from the artifact store %s", row.id, row.name, row.path,
                  ctx.store.url)
        raise NotFound(f"artifact {row.id} ({row.name!r}) is recorded, but its file {row.path!r} is missing from "
                       "the artifact store", field="artifact_id", code="artifact_missing") from None
