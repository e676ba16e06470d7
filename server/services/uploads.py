"""Receiving uploads (sandboxes, checkpoints, logs, metrics): streamed to the artifact store,
size-limited, checksummed; the row is written only after the bytes are safely stored, and a
refused upload leaves neither a row nor a file.

No HTTP here: the routes' side (the request's body and headers, the thread pool, removing the
file of a refused upload) is :mod:`phpo.server.api.uploads`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

from phpo.schemas.artifacts import Artifact
from phpo.schemas.data_specs import SPECS_NAME
from sqlalchemy.orm import Session

from ..auth.identity import Caller
from ..db.engine import Database, utcnow
from ..db.tables import ArtifactRow, JobRow
from ..errors import Conflict, InvalidInput, LeaseLost, NotFound, TooLarge
from ..repositories import uploads as repo
from ..repositories.artifacts import artifact_to_schema
from ..repositories.jobs import point_for_update
from .artifact_store import ArtifactStore

log = logging.getLogger(__name__)

SPECS_LOCK_BASE = 0x5EC5 << 32
"""PostgreSQL advisory lock keys of tasks' specs uploads: this plus the task id (an advisory
lock, not the task's row: it cannot deadlock with the broker's row locks)."""


async def receive(
    store: ArtifactStore,
    chunks: AsyncIterator[bytes],
    content_length: str | None,
    kind: str,
    name: str,
    *,
    max_bytes: int,
    limit: int | None = None,
) -> tuple[str, int, str]:
    """Stream ``chunks`` into a new file of the store: (its path, size, sha256). Over ``limit``
    (at most ``max_bytes``, the server's ``--max-upload-mb``) is a 413, told by the declared
    ``content_length`` before a byte is read when it says so."""
    limit = max_bytes if limit is None else min(limit, max_bytes)
    cl = content_length
    if cl and cl.isdigit() and int(cl) > limit:
        raise TooLarge(
            f"the upload ({int(cl) / 1048576:.1f} MB) is larger than the server's limit of "
            f"{limit / 1048576:g} MB (phpo server --max-upload-mb)",
            field="body",
        )
    rel = store.new_path(kind, name)
    size, sha = await store.write_stream(rel, chunks, limit)
    return rel, size, sha


def record_sandbox(db: Database, caller: Caller, name: str, rel: str, size: int, sha: str) -> Artifact:
    """The row of a sandbox whose bytes are stored at ``rel``."""
    with db.write() as s:
        row = ArtifactRow(
            kind="sandbox", name=name, size=size, sha256=sha, path=rel, owner=caller.name, created_at=utcnow()
        )
        s.add(row)
        s.flush()
        return artifact_to_schema(row)


def check_job(
    db: Database, caller: Caller, job_id: int, kind: str, point_id: int | None, name: str = ""
) -> None:
    """Before any byte is read: the job is the caller's, the point is the job's, a checkpoint
    or specs upload comes while the job runs (and specs under their content key, once)."""
    with db.read() as s:
        job = s.get(JobRow, job_id)
        if job is None or not (caller.is_admin or job.holder == caller.holder):
            raise NotFound(f"job {job_id} does not exist (or was not leased with this token)", field="job_id")
        if point_id is not None and point_id not in (job.point_ids or []):
            raise NotFound(f"point {point_id} is not part of job {job_id}", field="point_id")
        if kind == "checkpoint":
            if point_id is None:
                raise InvalidInput("a checkpoint belongs to a point: give ?point_id=", field="point_id")
            if job.state != "running":
                raise LeaseLost(
                    f"job {job_id} is {job.state}: its checkpoints are no longer taken", field="job_id"
                )
        if kind == "specs":
            if not SPECS_NAME.fullmatch(name):
                raise InvalidInput(
                    f"a specs artifact is named specs-<32 hex digits>.json (its content key), not {name!r}",
                    field="name",
                )
            if point_id is not None:
                raise InvalidInput(
                    "specs belong to the task, not to a point: no ?point_id=", field="point_id"
                )
            if job.state != "running":
                raise LeaseLost(f"job {job_id} is {job.state}: its specs are no longer taken", field="job_id")
            _no_specs_yet(s, job.task_id, name)


def _no_specs_yet(s: Session, task_id: int, name: str) -> None:
    """First upload wins: a task keeps one specs artifact per content key (the same key means
    the same content, so a second one adds nothing)."""
    old = repo.specs_artifact_id(s, task_id=task_id, name=name)
    if old is not None:
        raise Conflict(
            f"task {task_id} already has the specs {name} (artifact {old}); this copy is not kept",
            field="name",
        )


def task_specs(db: Database, caller: Caller, job_id: int) -> list[Artifact]:
    """The specs artifacts of the task of a job the caller holds."""
    check_job(db, caller, job_id, "list", None)
    with db.read() as s:
        task_id = s.get(JobRow, job_id).task_id
        return [artifact_to_schema(r) for r in repo.specs_artifacts(s, task_id=task_id)]


def record_job_artifact(
    db: Database, job_id: int, kind: str, name: str, point_id: int | None, rel: str, size: int, sha: str
) -> tuple[Artifact, list[str]]:
    """The row of a job's upload whose bytes are stored at ``rel``, checked again under the
    job's lock; with the paths of the files it replaces (a point keeps its newest checkpoint
    only), for the caller to remove once this is committed."""
    old_paths: list[str] = []
    with db.write() as s:
        job = repo.job_for_update(s, job_id=job_id)
        owner = repo.task_owner(s, task_id=job.task_id)
        row = ArtifactRow(
            kind=kind,
            name=name,
            size=size,
            sha256=sha,
            path=rel,
            owner=owner,
            task_id=job.task_id,
            point_id=point_id,
            job_id=job.id,
            created_at=utcnow(),
        )
        if kind == "checkpoint":
            p = point_for_update(s, point_id=point_id)
            # a pruned point's job may still save its newest checkpoint (kept for a resume by hand)
            if job.state != "running" or p.job_id != job.id or p.state not in ("leased", "pruned"):
                raise LeaseLost(
                    f"job {job_id} no longer holds point {point_id}; checkpoint not kept", field="job_id"
                )
            s.add(row)
            s.flush()
            # keep only the newest checkpoint of a point: the next attempt resumes from it
            if p.checkpoint_artifact_id is not None:
                old = repo.drop_artifact(s, artifact_id=p.checkpoint_artifact_id)
                if old is not None:
                    old_paths.append(old)
            p.checkpoint_artifact_id = row.id
        else:
            if kind == "specs":  # checked again under a lock of the task's specs: two at once keep one
                if not db.is_sqlite:  # (SQLite writes one transaction at a time anyway)
                    repo.lock_task_specs(s, key=SPECS_LOCK_BASE + job.task_id)
                _no_specs_yet(s, job.task_id, name)
            s.add(row)
            s.flush()
        return artifact_to_schema(row), old_paths


def _agent_may_read(s: Session, caller: Caller, row: ArtifactRow) -> bool:
    """An agent token reads only what the jobs it holds need: the sandbox of their task, the
    checkpoints of their points, and what it uploaded for them. Anything else (another user's
    sandbox, other jobs' logs and metrics) is not its business, whoever's token it is."""
    jobs = repo.running_jobs_of_holder(s, holder=caller.holder)
    if any(row.job_id == job_id for job_id, _, _ in jobs):
        return True
    if row.kind == "checkpoint":
        return any(row.task_id == task_id and row.point_id in (points or []) for _, task_id, points in jobs)
    if row.kind == "specs":
        return any(row.task_id == task_id for _, task_id, _ in jobs)
    if row.kind == "sandbox" and jobs:
        specs = repo.task_specs_of(s, task_ids={task_id for _, task_id, _ in jobs})
        return any(str((spec or {}).get("sandbox")) == str(row.id) for spec in specs)
    return False


def artifact_for_download(db: Database, caller: Caller, artifact_id: int) -> ArtifactRow:
    with db.read() as s:
        row = s.get(ArtifactRow, artifact_id)
        if row is None:
            raise NotFound(f"artifact {artifact_id} does not exist (or is not yours)", field="artifact_id")
        if caller.is_admin:
            return row
        if caller.role.value == "agent":
            if not _agent_may_read(s, caller, row):
                raise NotFound(
                    f"artifact {artifact_id} does not exist (or is not the sandbox, a checkpoint or "
                    "the specs or an upload of a job this token holds)",
                    field="artifact_id",
                )
            return row
        owner = row.owner
        if row.task_id is not None:
            owner = repo.task_owner_or_none(s, task_id=row.task_id)
        if owner != caller.name:
            raise NotFound(f"artifact {artifact_id} does not exist (or is not yours)", field="artifact_id")
        return row


def open_artifact(store: ArtifactStore, row: ArtifactRow) -> Iterator[bytes]:
    """The artifact's bytes; its file missing from the store is a 404 naming both (never an
    empty 200, which a client would take for a torn download and retry)."""
    try:
        return store.open_stream(row.path)
    except FileNotFoundError:
        log.error(
            "artifact %d (%s): its file %s is missing from the artifact store %s",
            row.id,
            row.name,
            row.path,
            store.url,
        )
        raise NotFound(
            f"artifact {row.id} ({row.name!r}) is recorded, but its file {row.path!r} is missing from "
            "the artifact store",
            field="artifact_id",
            code="artifact_missing",
        ) from None
