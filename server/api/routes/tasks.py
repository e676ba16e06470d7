"""Tasks of the calling user: submit, list, inspect, cancel/pause/resume, and their segments,
points, best points, steering iterations and artifacts."""

from __future__ import annotations

from fastapi import APIRouter, Request
from phpo.schemas.api import Page, SteeringIteration
from phpo.schemas.models import RegisteredModel
from phpo.schemas.artifacts import Artifact, ArtifactKind
from phpo.schemas.points import BestPoint, Point
from phpo.schemas.segments import Segment
from phpo.schemas.states import PointState
from phpo.schemas.tasks import Task, TaskSpec
from starlette.concurrency import run_in_threadpool

from ...errors import InvalidInput
from ...repositories.artifacts import list_artifacts
from ...repositories.iterations import list_iterations
from ...repositories.models import task_models
from ...repositories.points import best_points, list_points
from ...repositories.segments import list_segments
from ...repositories.tasks import get_task_row, list_tasks, task_to_schema
from ..bodies import body_schema, validated_body
from ..deps import Ctx, UserCaller
from ..params import Id, Limit, Offset, OptionalId, SegmentIndex

router = APIRouter(prefix="/tasks", tags=["tasks"])

POINT_STATES = tuple(str(x) for x in PointState)


def _states(value: str | None, allowed: tuple[str, ...] | None = None) -> list[str] | None:
    if not value:
        return None
    out = [x.strip() for x in value.split(",") if x.strip()]
    if allowed:
        bad = [x for x in out if x not in allowed]
        if bad:
            raise InvalidInput(f"unknown state {bad[0]!r}; use one of {', '.join(allowed)}", field="state")
    return out


@router.post("", response_model=Task, status_code=201, openapi_extra=body_schema(TaskSpec))
async def create_task(request: Request, ctx: Ctx, caller: UserCaller) -> Task:
    """The body is a :class:`TaskSpec`, validated in a worker thread (search spaces and segment
    lists can be large)."""
    spec = await validated_body(request, TaskSpec)
    return await run_in_threadpool(ctx.tasks.create, caller, spec)


@router.get("", response_model=Page[Task])
def get_tasks(
    ctx: Ctx,
    caller: UserCaller,
    state: str | None = None,
    name: str | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
    sort: str | None = None,
) -> Page[Task]:
    with ctx.db.read() as s:
        items, total = list_tasks(
            s, caller, state=_states(state), name=name, limit=limit, offset=offset, sort=sort
        )
    return Page[Task](items=items, total=total, limit=limit, offset=offset)


@router.get("/{task_id}", response_model=Task)
def get_task(task_id: Id, ctx: Ctx, caller: UserCaller) -> Task:
    """The task; ``waiting_for`` says which requirement no connected agent meets, if any."""
    with ctx.db.read() as s:
        task = task_to_schema(s, get_task_row(s, task_id, caller))
        task.waiting_for = ctx.broker.unmet_requirement(
            s, task.id, task.state.value, task.counts.ready, task.counts.leased
        )
    return task


@router.post("/{task_id}/cancel", response_model=Task)
def cancel_task(task_id: Id, ctx: Ctx, caller: UserCaller) -> Task:
    return ctx.tasks.cancel(caller, task_id)


@router.post("/{task_id}/pause", response_model=Task)
def pause_task(task_id: Id, ctx: Ctx, caller: UserCaller) -> Task:
    return ctx.tasks.pause(caller, task_id)


@router.post("/{task_id}/resume", response_model=Task)
def resume_task(task_id: Id, ctx: Ctx, caller: UserCaller) -> Task:
    return ctx.tasks.resume(caller, task_id)


@router.get("/{task_id}/segments", response_model=Page[Segment])
def get_segments(
    task_id: Id, ctx: Ctx, caller: UserCaller, limit: Limit = 100, offset: Offset = 0, sort: str | None = None
) -> Page[Segment]:
    """Per-segment summary (counts, best point), one page. ``sort``: id (default), name, best_loss,
    evaluated, failed, running (or leased), ready, jobs, finished; ``-key`` for descending.
    Segments with no best loss yet come last either way; ties are in id order."""
    with ctx.db.read() as s:
        task = get_task_row(s, task_id, caller)
        items, total = list_segments(s, task, limit=limit, offset=offset, sort=sort)
    return Page[Segment](items=items, total=total, limit=limit, offset=offset)


@router.get("/{task_id}/points", response_model=Page[Point])
def get_points(
    task_id: Id,
    ctx: Ctx,
    caller: UserCaller,
    segment: SegmentIndex = None,
    state: str | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
    sort: str | None = None,
) -> Page[Point]:
    with ctx.db.read() as s:
        get_task_row(s, task_id, caller)
        items, total = list_points(
            s,
            task_id,
            segment=segment,
            state=_states(state, POINT_STATES),
            limit=limit,
            offset=offset,
            sort=sort,
        )
    return Page[Point](items=items, total=total, limit=limit, offset=offset)


@router.get("/{task_id}/best", response_model=list[BestPoint])
def get_best(task_id: Id, ctx: Ctx, caller: UserCaller, segment: SegmentIndex = None) -> list[BestPoint]:
    with ctx.db.read() as s:
        task = get_task_row(s, task_id, caller)
        if segment is not None and not 0 <= segment < task.n_segments:
            raise InvalidInput(
                f"segment {segment} does not exist; the task has segments 0..{task.n_segments - 1}",
                field="segment",
            )
        return best_points(s, task, segment)


@router.get("/{task_id}/models", response_model=list[RegisteredModel], response_model_exclude_none=True)
def get_models(task_id: Id, ctx: Ctx, caller: UserCaller) -> list[RegisteredModel]:
    """Where the best model of each segment is in MLflow's model registry (name, version,
    ``models:/`` URI), once the segment has ended and the MLflow bridge registered it."""
    with ctx.db.read() as s:
        return task_models(s, get_task_row(s, task_id, caller))


@router.get("/{task_id}/iterations", response_model=Page[SteeringIteration])
def get_iterations(
    task_id: Id, ctx: Ctx, caller: UserCaller, limit: Limit = 100, offset: Offset = 0
) -> Page[SteeringIteration]:
    with ctx.db.read() as s:
        get_task_row(s, task_id, caller)
        items, total = list_iterations(s, task_id, limit=limit, offset=offset)
    return Page[SteeringIteration](items=items, total=total, limit=limit, offset=offset)


@router.get("/{task_id}/artifacts", response_model=Page[Artifact])
def get_artifacts(
    task_id: Id,
    ctx: Ctx,
    caller: UserCaller,
    kind: ArtifactKind | None = None,
    point_id: OptionalId = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[Artifact]:
    with ctx.db.read() as s:
        get_task_row(s, task_id, caller)
        items, total = list_artifacts(
            s, task_id, kind=kind.value if kind else None, point_id=point_id, limit=limit, offset=offset
        )
    return Page[Artifact](items=items, total=total, limit=limit, offset=offset)
