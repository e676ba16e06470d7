"""Request bodies bounded before FastAPI sees them.

FastAPI reads, parses and validates a JSON body in the event loop (for ``def`` routes too), so an
unbounded body stalls every other request, ``/health`` included. This ASGI middleware, in front
of the app:

- refuses a body larger than its route's limit with a 413 naming the limit, from the
  ``Content-Length`` header at once, else while reading (nothing is parsed or stored); uploads
  (sandboxes, job artifacts) have the larger ``--max-upload-mb`` limit and stream through
  unread, their route counts the bytes itself;
- refuses a JSON body nested deeper than :data:`MAX_JSON_DEPTH` (pydantic cannot serialize
  values much deeper than 255 levels: such a value, once stored, would break every later read)
  and one holding ``NaN``, ``Infinity`` or a number too large for a double anywhere (a database
  cannot keep them in JSON; the message names the field, e.g. ``intermediate.0.value``), both
  with a 422. Large bodies are checked in a worker thread.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from phpo.schemas.api import API_PREFIX, ErrorBody
from starlette.concurrency import run_in_threadpool

MAX_JSON_DEPTH = 64
_THREAD_ABOVE = 64 * 1024  # bytes; smaller bodies are checked inline (a thread hop costs more)

# routes whose body is a raw upload, not JSON: their own limit, counted by the route as it streams
UPLOAD_ROUTES = [
    ("PUT", re.compile(rf"^{re.escape(API_PREFIX)}/sandboxes/?$")),
    ("PUT", re.compile(rf"^{re.escape(API_PREFIX)}/jobs/[^/]+/artifacts/[^/]+/?$")),
]

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_DEPTH_STEP = np.zeros(256, dtype=np.int8)
_DEPTH_STEP[[ord("["), ord("{")]] = 1
_DEPTH_STEP[[ord("]"), ord("}")]] = -1

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class _NonFinite:
    def __init__(self, text: str):
        self.text = text


def json_depth(stripped: bytes) -> int:
    """Deepest nesting of arrays and objects in a body whose strings were taken out."""
    brackets = stripped.translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    return int(np.cumsum(_DEPTH_STEP[np.frombuffer(brackets, dtype=np.uint8)], dtype=np.int32).max(initial=0))


def _may_be_non_finite(stripped: bytes) -> bool:
    """``NaN``, ``Infinity``, an exponent of three digits or more, or 300 digits in a row (the
    only ways JSON text becomes a non-finite double); fast substring searches, digits as 0."""
    t = stripped.translate(_DIGITS_AS_ZERO)
    return (
        b"NaN" in t
        or b"Infinity" in t
        or b"0" * 300 in t
        or any(e in t for e in (b"e000", b"E000", b"e+000", b"E+000"))
    )


def _path_of_non_finite(value: Any) -> tuple[str, str] | None:
    stack: list[tuple[Any, list[str]]] = [(value, [])]
    while stack:
        v, path = stack.pop()
        if isinstance(v, _NonFinite):
            return ".".join(path) or "body", v.text
        if isinstance(v, dict):
            stack.extend((x, [*path, str(k)]) for k, x in reversed(v.items()))
        elif isinstance(v, list):
            stack.extend((x, [*path, str(i)]) for i, x in reversed(list(enumerate(v))))
    return None


def _float(text: str) -> float | _NonFinite:
    f = float(text)
    return f if math.isfinite(f) else _NonFinite(text if len(text) < 40 else text[:20] + "...")


def json_problem(body: bytes) -> tuple[str, str] | None:
    """``(field, message)`` for a JSON body the server refuses, else ``None`` (also for a body
    that is not JSON at all: the route's own validation says so). A few C-speed passes over the
    bytes with the strings taken out; only a body that may hold a non-finite number is parsed,
    to name the field."""
    stripped = _STRING.sub(b"", body)
    depth = json_depth(stripped)
    if depth > MAX_JSON_DEPTH:
        return "body", (
            f"the JSON body is nested {depth} levels deep; at most {MAX_JSON_DEPTH} levels are accepted"
        )
    if not _may_be_non_finite(stripped):
        return None
    try:
        parsed = json.loads(body, parse_constant=_NonFinite, parse_float=_float)
    except ValueError:
        return None
    found = _path_of_non_finite(parsed)
    if found is None:
        return None
    field, text = found
    return field, (
        f"{field}: {text} is not a finite number; JSON has no NaN or Infinity, and the "
        "server stores only finite numbers (send null instead)"
    )


def _error(status: int, code: str, message: str, field: str) -> tuple[dict[str, Any], bytes]:
    body = ErrorBody(code=code, message=message, field=field).model_dump_json().encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    }
    return start, body


class BodyLimits:
    """See the module docstring. ``json_limit``/``upload_limit`` in bytes."""

    def __init__(
        self, app: Callable[[Scope, Receive, Send], Awaitable[None]], *, json_limit: int, upload_limit: int
    ):
        self.app = app
        self.json_limit = json_limit
        self.upload_limit = upload_limit

    def limit_for(self, method: str, path: str) -> tuple[int, bool, str]:
        """(bytes, is an upload, the option that sets it) for a route."""
        if any(m == method and rx.match(path) for m, rx in UPLOAD_ROUTES):
            return self.upload_limit, True, "--max-upload-mb"
        return self.json_limit, False, "--max-body-mb"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        limit, upload, option = self.limit_for(method, path)
        too_large = (
            f"the request body of {method} {path} is larger than the server's limit of "
            f"{limit:,} bytes ({limit / 1048576:g} MB; phpo server {option})"
        )
        declared = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await self._answer(
                send,
                413,
                "too_large",
                too_large.replace("the request body", f"the request body ({int(declared):,} bytes)"),
                "body",
            )
            return
        if upload:
            await self.app(scope, receive, send)  # streamed and counted by the upload route
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._answer(send, 413, "too_large", too_large, "body")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body and _is_json(scope):
            problem = (
                await run_in_threadpool(json_problem, body)
                if len(body) > _THREAD_ABOVE
                else json_problem(body)
            )
            if problem is not None:
                await self._answer(send, 422, "validation_error", problem[1], problem[0])
                return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls wait for the disconnect, as the app expects

        await self.app(scope, replay, send)

    @staticmethod
    async def _answer(send: Send, status: int, code: str, message: str, field: str) -> None:
        start, body = _error(status, code, message, field)
        await send(start)
        await send({"type": "http.response.body", "body": body})


def _is_json(scope: Scope) -> bool:
    ctype = dict(scope.get("headers") or ()).get(b"content-type", b"").split(b";")[0].strip().lower()
    return not ctype or ctype == b"application/json" or ctype.endswith(b"+json")
