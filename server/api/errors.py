"""Every error answer is an :class:`~phpo.schemas.api.ErrorBody`: ``code``, ``message``, ``field``."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from phpo.schemas.api import ErrorBody
from phpo.schemas.states import IllegalTransition
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ApiError

log = logging.getLogger(__name__)

_LOC_ROOTS = {"body", "query", "path", "header", "cookie"}
_FIELD_PREFIX = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*): ")
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "validation_error",
}


_BOUND_TYPES = {
    "greater_than",
    "greater_than_equal",
    "less_than",
    "less_than_equal",
    "int_parsing",
    "int_from_float",
    "finite_number",
    "float_parsing",
    "string_too_long",
    "too_long",
}


def _short(value: Any) -> str:
    text = (
        repr(value)
        if not isinstance(value, (str, list, dict)) or len(repr(value)) <= 60
        else (f"a {type(value).__name__} of length {len(value)}")
    )
    return text


def _body(
    status: int, code: str, message: str, field: str | None = None, details: list[dict] | None = None
) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content=ErrorBody(code=code, message=message, field=field, details=details).model_dump(mode="json"),
    )


def _field_and_message(err: dict[str, Any]) -> tuple[str | None, str]:
    loc = [str(x) for x in err.get("loc", ()) if not (isinstance(x, str) and x in _LOC_ROOTS)]
    # discriminated unions and function validators add their tag to the loc: keep field names only
    loc = [
        x for x in loc if not x.startswith("function-") and x not in ("dict[str,any]", "list[dict[str,any]]")
    ]
    msg = str(err.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    if err.get("type") == "json_invalid":
        return "body", f"the request body is not valid JSON: {err.get('ctx', {}).get('error', msg)}"
    if err.get("type") == "extra_forbidden" and loc:
        return ".".join(loc), f"{'.'.join(loc)}: unknown option"
    field = ".".join(loc) if loc else None
    if err.get("type") in _BOUND_TYPES and "input" in err:
        msg += f", got {_short(err['input'])}"  # the wrong value beside what would be right
    m = _FIELD_PREFIX.match(msg)
    if m and (field is None or "." not in field):
        # model-level TaskSpec errors start with the option they are about
        field = m.group(1) if field is None else field
        return field, msg
    return field, f"{field}: {msg}" if field else msg


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_r: Request, e: ApiError) -> JSONResponse:
        return _body(e.status, e.code, e.message, e.field, e.details)

    @app.exception_handler(IllegalTransition)
    async def _illegal(_r: Request, e: IllegalTransition) -> JSONResponse:
        return _body(409, "illegal_transition", str(e), "state")

    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, e: RequestValidationError) -> JSONResponse:
        errors = list(e.errors())
        field, message = _field_and_message(errors[0]) if errors else (None, "invalid request")
        details = [
            {
                "loc": [str(x) for x in er.get("loc", ())],
                "msg": str(er.get("msg")),
                "type": str(er.get("type")),
            }
            for er in errors
        ]
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        return _body(422, "validation_error", message, field, details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, e: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(e.status_code, f"http_{e.status_code}")
        msg = e.detail if isinstance(e.detail, str) else str(e.detail)
        if e.status_code == 404 and msg == "Not Found":
            msg = f"no such API route: {_r.method} {_r.url.path}"
        return _body(e.status_code, code, msg)

    @app.exception_handler(Exception)
    async def _crash(_r: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", _r.method, _r.url.path)
        return _body(500, "internal_error", f"the server failed: {type(e).__name__}: {e}")
