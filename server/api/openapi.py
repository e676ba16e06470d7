"""The OpenAPI document: FastAPI's, plus what it cannot infer from the routes.

- every operation that needs a token declares the ``bearer`` security scheme (from
  :func:`~phpo.server.api.deps.current_caller`);
- the bodies that routes validate off the event loop (:mod:`.bodies`) are declared;
- the error answers each operation can give (401, 403, 404, 409, 413, 422) are declared with
  the one body every error has, :class:`~phpo.schemas.api.ErrorBody` (``code`` + ``message``),
  in place of FastAPI's own validation-error model, which this server never sends.

Done once over the generated document, so routes added later get the same declarations.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from phpo.schemas.api import ErrorBody

from .bodies import BODY_MODELS

_REF = {"$ref": "#/components/schemas/ErrorBody"}
ERRORS = {
    "401": "no bearer token, or one the server does not know (code unauthorized)",
    "403": "the token's role may not make this call (code forbidden)",
    "404": "no such record, or not one the caller may see (code not_found)",
    "409": "the record's state does not allow this now (codes conflict, lease_lost, illegal_transition)",
    "413": "the request body is larger than this route's limit, which the message names (code too_large)",
    "422": "a parameter or the body is invalid; field names it (code validation_error)",
}


def _codes(path: str, method: str, op: dict[str, Any]) -> list[str]:
    codes = []
    if op.get("security"):
        codes += ["401", "403"]
    if "{" in path:
        codes.append("404")
    if method in ("post", "put", "patch", "delete") and "{" in path:
        codes.append("409")
    if method in ("post", "put", "patch"):
        codes.append("413")
    if op.get("parameters") or op.get("requestBody"):
        codes.append("422")
    return codes


def _add_model(components: dict[str, Any], model: Any) -> None:
    js = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in js.pop("$defs", {}).items():
        components.setdefault(name, sub)
    components.setdefault(model.__name__, js)


def declare_errors(schema: dict[str, Any]) -> dict[str, Any]:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (ErrorBody, *BODY_MODELS):  # bodies validated in a thread are not seen by FastAPI
        _add_model(components, model)
    for path, ops in schema.get("paths", {}).items():
        for method, op in ops.items():
            responses = op.setdefault("responses", {})
            for code in _codes(path, method, op):
                responses[code] = {
                    "description": ERRORS[code],
                    "content": {"application/json": {"schema": _REF}},
                }
    used = str(schema.get("paths"))
    for name in ("HTTPValidationError", "ValidationError"):
        if f"/{name}'" not in used:
            components.pop(name, None)
    return schema


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = declare_errors(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                    tags=app.openapi_tags,
                    servers=app.servers,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
