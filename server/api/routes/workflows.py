"""Workflows of the calling user: submit, list, inspect (the node tree), cancel.

Another user's workflow answers 404, as for tasks. The definition is checked node by node
before anything is stored (see :mod:`phpo.server.workflows.validation`).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from phpo.schemas.api import Page
from phpo.schemas.workflows import Workflow, WorkflowSubmit

from starlette.concurrency import run_in_threadpool

from ...repositories.workflows import get_workflow_row, list_workflows, workflow_to_schema
from ..bodies import body_schema, validated_body
from ..deps import Ctx, UserCaller
from ..params import Id, Limit, Offset

router = APIRouter(prefix="/workflows", tags=["workflows"])


@router.post("", response_model=Workflow, status_code=201, openapi_extra=body_schema(WorkflowSubmit))
async def create_workflow(request: Request, ctx: Ctx, caller: UserCaller) -> Workflow:
    """The body is a :class:`WorkflowSubmit`, validated in a worker thread (definitions nest)."""
    body = await validated_body(request, WorkflowSubmit)
    return await run_in_threadpool(ctx.workflows.submit, caller, body)


@router.get("", response_model=Page[Workflow])
def get_workflows(
    ctx: Ctx,
    caller: UserCaller,
    state: str | None = None,
    name: str | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
    sort: str | None = None,
) -> Page[Workflow]:
    states = [x.strip() for x in state.split(",") if x.strip()] if state else None
    with ctx.db.read() as s:
        items, total = list_workflows(
            s, caller, state=states, name=name, limit=limit, offset=offset, sort=sort
        )
    return Page[Workflow](items=items, total=total, limit=limit, offset=offset)


@router.get("/{workflow_id}", response_model=Workflow)
def get_workflow(workflow_id: Id, ctx: Ctx, caller: UserCaller) -> Workflow:
    with ctx.db.read() as s:
        return workflow_to_schema(s, get_workflow_row(s, workflow_id, caller))


@router.post("/{workflow_id}/cancel", response_model=Workflow)
def cancel_workflow(workflow_id: Id, ctx: Ctx, caller: UserCaller) -> Workflow:
    return ctx.workflows.cancel(caller, workflow_id)
