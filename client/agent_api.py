"""The agent's side of the REST API: lease jobs, heartbeat, report results, move artifacts.

Every call goes through :class:`~phpo.client._http.HttpBase`, so an error answer becomes one of
:mod:`phpo.client.errors`. Network failures (and 5xx answers, which a restarting server or a
proxy gives) are retried with exponential backoff for at most ``retry_seconds``; a 4xx answer
is final and raised at once, because sending the same request again cannot change it. The
result calls are idempotent on the server (a resend answers ``duplicate: true``), which is
what makes retrying them safe.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
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
from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
)

from ._http import HttpBase, raise_for_answer
from .errors import APIError, ServerUnreachable

log = logging.getLogger("phpo.agent.api")

T = TypeVar("T")

CHUNK = 1024 * 1024


def is_transient(exc: BaseException) -> bool:
    """Errors worth another try: no answer at all, or a server-side (5xx) answer."""
    if isinstance(exc, ServerUnreachable):
        return True
    if isinstance(exc, APIError):
        return exc.status >= 500
    return isinstance(exc, httpx.TransportError)


def _non_finite(value: Any, path: tuple = ()) -> Iterator[tuple[tuple, float]]:
    if isinstance(value, float) and not math.isfinite(value):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _non_finite(v, (*path, k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _non_finite(v, (*path, i))


def finite_payload(body: Any, what: str = "request") -> dict[str, Any]:
    """``body`` as JSON-ready data with every NaN/Infinity (a payload's metrics may hold them) as
    null: JSON has no such numbers and the server refuses them, which would lose the whole call.
    Where the body has a ``message``, it names the values so replaced."""
    payload = body.model_dump(mode="json", exclude_none=False)
    found = list(_non_finite(body.model_dump(mode="python", exclude_none=False)))
    if not found:
        return payload
    for path, _ in found:
        holder: Any = payload
        for key in path[:-1]:
            holder = holder[key]
        holder[path[-1]] = None
    names = ", ".join(f"{'.'.join(map(str, p))} ({v})" for p, v in found[:10])
    note = f"non-finite values sent as null: {names}" + (
        f" and {len(found) - 10} more" if len(found) > 10 else ""
    )
    log.warning("%s: %s", what, note)
    if "message" in payload and not any(p == ("message",) for p, _ in found):
        payload["message"] = f"{payload['message']}; {note}" if payload["message"] else note
    return payload


class AgentAPI(HttpBase):
    """Typed calls for the routes an agent uses (``/jobs/...`` and ``GET /artifacts/{id}``).

    ``retry_seconds`` bounds how long one call keeps retrying a network failure before it
    raises; the agent then keeps the result in its on-disk outbox instead of losing it.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        retry_seconds: float = 60.0,
        max_backoff: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ):
        super().__init__(url, token, timeout=timeout, transport=transport)
        self._http.headers["User-Agent"] = "phpo-agent"
        self.retry_seconds = retry_seconds
        self.max_backoff = max_backoff

    # --- retry wrapper -----------------------------------------------------------------

    def _retry(self, fn: Callable[[], T], what: str, retry_seconds: float | None = None) -> T:
        budget = self.retry_seconds if retry_seconds is None else retry_seconds
        if budget <= 0:
            return fn()
        retrying = Retrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_delay(budget),
            wait=wait_exponential(multiplier=0.2, min=0.2, max=self.max_backoff),
            before_sleep=before_sleep_log(log, logging.WARNING),
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                return fn()
        raise AssertionError(f"unreachable: {what}")  # pragma: no cover

    def _post(self, path: str, body: Any, what: str, retry_seconds: float | None = None) -> httpx.Response:
        payload = finite_payload(body, what)
        return self._retry(lambda: self.request("POST", path, json=payload), what, retry_seconds)

    # --- jobs --------------------------------------------------------------------------

    def acquire(self, req: AcquireRequest, retry_seconds: float | None = None) -> Job | None:
        """Lease a job; ``None`` when the server has nothing for this agent (204)."""
        r = self._post("/jobs/acquire", req, "acquire", retry_seconds)
        if r.status_code == 204 or not r.content:
            return None
        return Job.model_validate(r.json())

    def heartbeat(
        self, job_id: int, req: HeartbeatRequest, retry_seconds: float | None = None
    ) -> HeartbeatResponse:
        r = self._post(f"/jobs/{job_id}/heartbeat", req, "heartbeat", retry_seconds)
        return HeartbeatResponse.model_validate(r.json())

    def report_point(self, job_id: int, result: PointResult, retry_seconds: float | None = None) -> JobAck:
        r = self._post(
            f"/jobs/{job_id}/points/{result.point_id}/result", result, "report_point", retry_seconds
        )
        return JobAck.model_validate(r.json())

    def complete(self, job_id: int, req: CompleteRequest, retry_seconds: float | None = None) -> JobAck:
        r = self._post(f"/jobs/{job_id}/complete", req, "complete", retry_seconds)
        return JobAck.model_validate(r.json())

    def fail(self, job_id: int, req: FailRequest, retry_seconds: float | None = None) -> JobAck:
        r = self._post(f"/jobs/{job_id}/fail", req, "fail", retry_seconds)
        return JobAck.model_validate(r.json())

    # --- artifacts ---------------------------------------------------------------------

    def upload_artifact(
        self,
        job_id: int,
        kind: ArtifactKind | str,
        path: str | os.PathLike[str],
        name: str,
        point_id: int | None = None,
        retry_seconds: float | None = None,
    ) -> Artifact:
        """Stream a file as the raw PUT body (never read whole into memory; checkpoints can
        be many GB). Each retry reopens the file from its start."""
        path = Path(path)
        size = path.stat().st_size
        params: dict[str, Any] = {"name": name}
        if point_id is not None:
            params["point_id"] = point_id
        kind_s = ArtifactKind(kind).value

        def chunks() -> Iterator[bytes]:
            with open(path, "rb") as f:
                while block := f.read(CHUNK):
                    yield block

        def send() -> httpx.Response:
            return self.request(
                "PUT",
                f"/jobs/{job_id}/artifacts/{kind_s}",
                params=params,
                content=chunks(),
                headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
            )

        r = self._retry(send, "upload_artifact", retry_seconds)
        return Artifact.model_validate(r.json())

    def task_specs(self, job_id: int, retry_seconds: float | None = None) -> list[Artifact]:
        """The ``specs`` artifacts of the task of a job this agent holds."""
        r = self._retry(lambda: self.request("GET", f"/jobs/{job_id}/specs"), "task_specs", retry_seconds)
        return [Artifact.model_validate(a) for a in r.json()]

    def download_artifact(
        self, artifact_id: int, dest_path: str | os.PathLike[str], retry_seconds: float | None = None
    ) -> Path:
        """Stream ``GET /artifacts/{id}`` to ``dest_path`` (written under a temporary name and
        renamed, so a half-downloaded file never looks complete)."""
        dest = Path(dest_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")

        def fetch() -> Path:
            try:
                with self.stream("GET", f"/artifacts/{artifact_id}") as r:
                    if r.status_code >= 400:
                        r.read()
                        raise_for_answer(r)
                    expected = r.headers.get("X-Checksum-Sha256")
                    digest = hashlib.sha256()
                    with open(tmp, "wb") as f:
                        for block in r.iter_bytes(CHUNK):
                            digest.update(block)
                            f.write(block)
            except httpx.TransportError as e:
                raise ServerUnreachable(f"cannot reach the phpo server at {self.url}: {e}") from e
            if expected and digest.hexdigest() != expected.lower():
                tmp.unlink(missing_ok=True)
                # a torn transfer: worth another try, like a dropped connection
                raise ServerUnreachable(
                    f"artifact {artifact_id} arrived corrupted (sha256 {digest.hexdigest()}, "
                    f"expected {expected})"
                )
            tmp.replace(dest)
            return dest

        return self._retry(fetch, "download_artifact", retry_seconds)
