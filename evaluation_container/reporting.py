"""Tell the server how a job went: each point's result as soon as it is known, the job's end
(``complete`` or ``fail``; into the on-disk outbox when the server is away), and the files a
point leaves (logs, meta, metrics, the payload's own MLflow runs), best effort."""

from __future__ import annotations

import logging
import shutil
import tarfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from phpo.client.agent_api import AgentAPI, is_transient
from phpo.client.errors import APIError, Conflict, NotFound
from phpo.schemas.artifacts import ArtifactKind
from phpo.schemas.jobs import CompleteRequest, FailRequest, Job, JobPoint, PointResult

from . import mlflow_local
from .outbox import Outbox
from .workdir import JobWorkdir

if TYPE_CHECKING:
    from .specs_exchange import SpecsExchange

log = logging.getLogger("phpo.agent")

META_MAX_BYTES = 1024 * 1024


class JobReporter:
    """One job's calls to the server that carry its results and files."""

    def __init__(
        self,
        api: AgentAPI,
        job: Job,
        workdir: JobWorkdir,
        outbox: Outbox,
        lease_lost: threading.Event,
        retry_seconds: float,
        max_log_bytes: int,
    ):
        self.api = api
        self.job = job
        self.workdir = workdir
        self.outbox = outbox
        self.retry_seconds = retry_seconds
        self.max_log_bytes = max_log_bytes
        self.lease_lost = lease_lost  # set when the server refuses a point's result: the lease is gone
        self.next_job: Job | None = None  # leased by ``complete`` for this slot

    def finish(self, kind: str, body: CompleteRequest | FailRequest) -> None:
        """End the job on the server; keep the call in the outbox when the server is away."""
        try:
            if kind == "complete":
                ack = self.api.complete(self.job.id, body)  # type: ignore[arg-type]
            else:
                ack = self.api.fail(self.job.id, body)  # type: ignore[arg-type]
            log.info(
                "job %d: %s acknowledged (state %s%s)",
                self.job.id,
                kind,
                ack.state,
                ", duplicate" if ack.duplicate else "",
            )
            self.next_job = ack.next_job
        except Exception as e:
            if is_transient(e):
                # the outbox resends the result, never the request for a next job
                self.outbox.put(kind, self.job.id, body.model_dump(mode="json", exclude={"next"}), str(e))
            elif isinstance(e, APIError):
                log.error("job %d: the server refused %s: %s", self.job.id, kind, e)
            else:
                raise

    def report_point(self, result: PointResult) -> bool:
        """Report one point now; False when it must go with ``complete`` instead (no answer)."""
        try:
            ack = self.api.report_point(self.job.id, result)
            log.info(
                "job %d: point %d reported (status %d%s)",
                self.job.id,
                result.point_id,
                result.status,
                ", duplicate" if ack.duplicate else "",
            )
            return True
        except (Conflict, NotFound) as e:
            log.error("job %d: point %d result refused: %s", self.job.id, result.point_id, e)
            self.lease_lost.set()
            return True
        except Exception as e:
            if is_transient(e):
                log.warning(
                    "job %d: point %d result not acknowledged (%s); it goes with complete",
                    self.job.id,
                    result.point_id,
                    e,
                )
                return False
            if isinstance(e, APIError):
                log.error("job %d: point %d result refused: %s", self.job.id, result.point_id, e)
                return True
            raise

    # --- files ------------------------------------------------------------------------------

    def upload(self, kind: ArtifactKind, path: Path, name: str, point_id: int | None) -> None:
        """Best-effort upload of a log/meta/metrics file (a lost log must not lose a result)."""
        try:
            self.api.upload_artifact(
                self.job.id, kind, path, name, point_id=point_id, retry_seconds=min(self.retry_seconds, 30)
            )
        except Exception as e:  # noqa: BLE001
            log.warning("job %d: upload of %s %s failed: %s", self.job.id, kind.value, name, e)

    def upload_log(self, path: Path, name: str, point_id: int | None) -> None:
        if not path.exists() or path.stat().st_size == 0:
            return
        size = path.stat().st_size
        if size <= self.max_log_bytes:
            self.upload(ArtifactKind.log, path, name, point_id)
            return
        cut = self.workdir.scratch / (name + ".tail")
        with open(path, "rb") as src, open(cut, "wb") as dst:
            src.seek(size - self.max_log_bytes)
            dst.write(
                f"[phpo: first {size - self.max_log_bytes} bytes cut, "
                f"keeping the last {self.max_log_bytes}]\n".encode()
            )
            shutil.copyfileobj(src, dst)
        self.upload(ArtifactKind.log, cut, name, point_id)
        cut.unlink(missing_ok=True)

    def upload_point_files(
        self, point: JobPoint, stdout: Path, stderr: Path, specs_exchange: SpecsExchange | None
    ) -> None:
        """What a point's attempt leaves: the specs it wrote for the task, its logs, its meta
        and metrics files, what it logged with MLflow."""
        ev = self.job.evaluation
        assert ev is not None
        name = f"job{self.job.id}-a{point.attempt}"
        if specs_exchange is not None:
            specs_exchange.publish()
        self.upload_log(stdout, f"{name}.stdout.txt", point.point_id)
        self.upload_log(stderr, f"{name}.stderr.txt", point.point_id)
        for kind, rel, limit in (
            (ArtifactKind.meta, ev.meta, META_MAX_BYTES),
            (ArtifactKind.metrics, ev.metrics, None),
        ):
            p = self.workdir.copy_out(rel, limit) if rel else None
            if p is not None:
                self.upload(kind, p, Path(rel).name, point.point_id)
                p.unlink(missing_ok=True)
        if self.job.mlflow_tracking_uri:  # what the payload logged with MLflow, for the point's run
            self._upload_mlruns(name, ev.metrics, point.point_id)

    def _upload_mlruns(self, name: str, metrics: str | None, point_id: int) -> None:
        try:
            packed = mlflow_local.pack(
                self.workdir.rundir, metrics, self.workdir.scratch / f"{name}.mlruns.tgz"
            )
        except (OSError, tarfile.TarError) as e:
            log.warning("job %d: cannot pack the payload's mlruns/: %s", self.job.id, e)
            return
        if packed is not None:
            self.upload(ArtifactKind.metrics, packed, packed.name, point_id)
            packed.unlink(missing_ok=True)
