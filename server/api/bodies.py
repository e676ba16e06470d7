"""Request bodies parsed and validated in a worker thread.

FastAPI parses and validates a declared body model in the event loop, also for ``def`` routes.
For most bodies that is cheap, but a task spec or a workflow definition carries search spaces,
segment lists and node trees whose validation costs time in proportion to their size; done in
the loop it would stall every other request (``/health`` included). Routes taking such a body
read it with :func:`validated_body` and declare it with :func:`body_schema`, so the OpenAPI
document still names the model.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

M = TypeVar("M", bound=BaseModel)

BODY_MODELS: list[type[BaseModel]] = []
"""Models declared through :func:`body_schema`; :mod:`.openapi` adds their schemas."""


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` of a route whose JSON body is ``model``."""
    if model not in BODY_MODELS:
        BODY_MODELS.append(model)
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    }


def _validate(model: type[M], body: bytes) -> M:
    try:
        data = json.loads(body) if body else None
    except ValueError as e:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body",),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": str(e)},
                }
            ]
        ) from None
    if data is None:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "a JSON body is required", "input": None}]
        )
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from None


async def validated_body(request: Request, model: type[M]) -> M:
    """The request's JSON body as ``model``, parsed and validated off the event loop; errors are
    the same 422 answers FastAPI's own validation gives."""
    return await run_in_threadpool(_validate, model, await request.body())
