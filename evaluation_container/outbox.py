"""Results the server has not acknowledged yet, kept on disk until it does.

A finished point is the expensive part of an HPO search (hours of GPU time), so its result is
never dropped because the network was down when it ended: the call is written to
``<workdir>/outbox/<seq>-<kind>-job<id>.json`` first-in-first-out and resent (at agent start and
periodically) until the server answers. The server's result calls are idempotent, so a resend of
a result that did arrive only gets ``duplicate: true``. An answer that refuses the call for good
(4xx: the lease was lost, the job is unknown) moves the file to ``outbox/rejected/`` with the
reason, where a person can still find it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from phpo.client.agent_api import AgentAPI, is_transient
from phpo.client.errors import APIError
from phpo.schemas.jobs import CompleteRequest, FailRequest, PointResult

log = logging.getLogger("phpo.agent.outbox")

KINDS = ("point_result", "complete", "fail")


class Outbox:
    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rejected = self.dir / "rejected"
        self._lock = threading.Lock()

    def put(self, kind: str, job_id: int, body: dict[str, Any], error: str = "") -> Path:
        if kind not in KINDS:
            raise ValueError(f"unknown outbox kind {kind!r}")
        record = {"kind": kind, "job_id": job_id, "body": body, "saved_at": time.time(), "error": error}
        with self._lock:
            name = f"{time.time_ns():020d}-{kind}-job{job_id}.json"
            path = self.dir / name
            tmp = path.with_suffix(".tmp")
            with open(tmp, "w") as f:
                json.dump(record, f)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(path)
        log.warning("server did not acknowledge %s of job %d (%s); kept in %s", kind, job_id, error, path)
        return path

    def pending(self) -> list[Path]:
        return sorted(self.dir.glob("*.json"))

    def __len__(self) -> int:
        return len(self.pending())

    def flush(self, api: AgentAPI, retry_seconds: float = 0) -> int:
        """Resend everything in order; stop at the first network failure (the rest would fail
        the same way). Returns how many files were settled (acknowledged or rejected)."""
        settled = 0
        with self._lock:
            for path in self.pending():
                try:
                    record = json.loads(path.read_text())
                except (OSError, ValueError) as e:
                    self._reject(path, f"unreadable outbox file: {e}")
                    continue
                try:
                    ack = _send(api, record, retry_seconds)
                except Exception as e:
                    if is_transient(e):
                        log.info(
                            "outbox: server still unreachable (%s); %d result(s) waiting",
                            e,
                            len(self.pending()),
                        )
                        break
                    if isinstance(e, APIError):
                        self._reject(path, str(e))
                        settled += 1
                        continue
                    raise
                log.info("outbox: %s of job %s delivered (%s)", record["kind"], record["job_id"], ack)
                path.unlink(missing_ok=True)
                settled += 1
        return settled

    def _reject(self, path: Path, reason: str) -> None:
        self.rejected.mkdir(exist_ok=True)
        target = self.rejected / path.name
        path.replace(target)
        target.with_suffix(".reason.txt").write_text(reason + "\n")
        log.error("outbox: the server refused %s for good: %s", path.name, reason)


def _send(api: AgentAPI, record: dict[str, Any], retry_seconds: float) -> Any:
    kind, job_id, body = record["kind"], int(record["job_id"]), record["body"]
    if kind == "point_result":
        return api.report_point(job_id, PointResult.model_validate(body), retry_seconds=retry_seconds)
    if kind == "complete":
        return api.complete(job_id, CompleteRequest.model_validate(body), retry_seconds=retry_seconds)
    if kind == "fail":
        return api.fail(job_id, FailRequest.model_validate(body), retry_seconds=retry_seconds)
    raise ValueError(f"unknown outbox kind {kind!r}")
