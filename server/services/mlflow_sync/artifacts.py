"""The MLflow bridge's artifacts: each point's logs and ``evaluationMetrics`` file to its run
(``logs/``, ``metrics/``; a metrics tarball holding ``mlruns/`` is imported by
:class:`.mlruns_import.MlrunsImporter` instead), and once a segment has ended the checkpoint of
its best point (``checkpoint/``). The ``mlflow_artifacts`` table records what was handled."""

from __future__ import annotations

import logging
import tarfile
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any

from phpo.schemas.api import API_PREFIX
from ...db.engine import Database, utcnow
from ...db.tables import MlflowArtifactRow, TaskRow
from ...repositories import mlflow_bridge as repo
from ...repositories.points import best_point_id
from .common import NAME_BAD, PARAM_MAX, mlflow_up
from .mlruns_import import MlrunsImporter

log = logging.getLogger("phpo.server.services.mlflow_bridge")


class ArtifactSync:
    """phpo's artifacts (``store``: the ArtifactStore) to the points' runs, ``artifact_batch``
    uploads per pass (uploads are slow: a few per pass, so runs are never held up long)."""

    def __init__(self, db: Database, client: Any, store: Any, max_artifact_bytes: int):
        self.db = db
        self.client = client
        self.store = store
        self.max_artifact_bytes = max_artifact_bytes
        self.artifact_batch = 20
        self.importer = MlrunsImporter(client, max_artifact_bytes)
        self._art_floor = 0  # every log/metrics artifact with an id at or below it is handled
        self._floor_reset = 0.0

    def _record(
        self,
        art_id: int,
        tid: int,
        pid: int | None,
        kind: str,
        run_id: str,
        status: str,
        detail: str | None = None,
    ) -> None:
        with self.db.write() as s:
            if s.get(MlflowArtifactRow, art_id) is None:
                s.add(
                    MlflowArtifactRow(
                        artifact_id=art_id,
                        task_id=tid,
                        point_id=pid,
                        kind=kind,
                        run_id=run_id,
                        status=status,
                        detail=detail[:4000] if detail else None,
                        updated_at=utcnow(),
                    )
                )

    def sync_artifacts(self) -> int:
        """Each point's logs and metrics file to its run. Artifacts are never changed once written,
        so a floor (every id at or below it is handled) spares a scan of the whole table per pass;
        it is reset now and then, since on PostgreSQL ids may commit out of order."""
        now = time.monotonic()
        if now >= self._floor_reset:
            self._art_floor, self._floor_reset = 0, now + 60
        with self.db.read() as s:
            rows = repo.unsent_logs_and_metrics(s, above=self._art_floor, limit=10 * self.artifact_batch)
        waiting: int | None = None  # the first artifact whose point has no run yet
        sent = 0
        last = self._art_floor
        for aid, kind, name, size, path, tid, pid, run_id, eid in rows:
            if run_id is None:
                waiting = aid if waiting is None else waiting
                continue
            if sent >= self.artifact_batch:
                break
            self._send(
                aid,
                kind,
                name,
                size,
                path,
                tid or 0,
                pid,
                run_id,
                eid,
                "logs" if kind == "log" else "metrics",
            )
            sent += 1
            last = aid
        if waiting is not None:
            last = min(last, waiting - 1)
        self._art_floor = max(self._art_floor, last)
        return sent

    def sync_checkpoints(self) -> int:
        """Once a segment has ended (finished, or its task ended, and no point is waiting or
        running), the checkpoint of its best evaluated point goes to that point's run; the other
        points' checkpoints are recorded as skipped, so each segment is looked at once."""
        with self.db.read() as s:
            segs = repo.segments_with_unsent_checkpoints(s, limit=self.artifact_batch)
        for tid, seg_idx in segs:
            with self.db.read() as s:
                # the API's and the CLI's rule (several objectives: the Pareto front's first point)
                best = best_point_id(s, s.get(TaskRow, tid), seg_idx)
                cands = repo.unsent_checkpoints(s, task_id=tid, segment_idx=seg_idx)
            for pid, aid, name, size, path, run_id, eid in cands:
                if pid != best:
                    self._record(
                        aid,
                        tid,
                        pid,
                        "checkpoint",
                        run_id or "",
                        "skipped",
                        "not the best evaluated point of its segment",
                    )
                elif run_id is not None:  # else: its run is not created yet; the next look sends it
                    self._send(
                        aid,
                        "checkpoint",
                        name,
                        size,
                        path,
                        tid,
                        pid,
                        run_id,
                        eid,
                        "checkpoint",
                        {"phpo.best_in_segment": "true", "phpo.checkpoint_artifact_id": str(aid)},
                    )
        return len(segs)

    def _send(
        self,
        aid: int,
        kind: str,
        name: str,
        size: int,
        path: str,
        tid: int,
        pid: int | None,
        run_id: str,
        eid: str,
        subdir: str,
        tags: dict[str, str] | None = None,
    ) -> None:
        """One phpo artifact to MLflow, then its outbox row. A failure that is this artifact's
        own (a broken tarball, a refused value) is recorded as 'error' and tagged on the run; a
        failure while MLflow is unreachable propagates, and the pass is retried."""
        if not run_id:
            self._record(aid, tid, pid, kind, "", "skipped", "the point has no MLflow run")
            return
        try:
            status, detail = self._put(aid, kind, name, size, path, pid, run_id, eid, subdir, tags or {})
        except Exception as e:  # noqa: BLE001
            if not mlflow_up(self.client):
                raise
            status, detail = "error", f"{type(e).__name__}: {e}"
            log.warning(
                "mlflow bridge: artifact %d (%s %s) not sent to run %s: %s", aid, kind, name, run_id, detail
            )
            try:
                self.client.set_tag(run_id, f"phpo.artifact_error.{aid}", f"{name}: {detail}"[:PARAM_MAX])
            except Exception:  # noqa: BLE001 - the record below is what counts
                pass
        self._record(aid, tid, pid, kind, run_id, status, detail)

    def _put(
        self,
        aid: int,
        kind: str,
        name: str,
        size: int,
        path: str,
        pid: int | None,
        run_id: str,
        eid: str,
        subdir: str,
        tags: dict[str, str],
    ) -> tuple[str, str | None]:
        from mlflow.entities import RunTag

        if size > self.max_artifact_bytes:
            why = (
                f"{name}: {size} bytes, over the MLflow bridge's limit of {self.max_artifact_bytes} bytes; "
                f"download it from phpo: GET {API_PREFIX}/artifacts/{aid}"
            )
            self.client.log_batch(
                run_id,
                tags=[RunTag(k, v) for k, v in tags.items()] + [RunTag(f"phpo.artifact_skipped.{aid}", why)],
            )
            return "skipped", why
        with tempfile.TemporaryDirectory(prefix="phpo-mlflow-") as tmp:
            local = Path(tmp) / (NAME_BAD.sub("_", PurePosixPath(name).name)[-150:].lstrip(".") or "artifact")
            got = 0
            with open(local, "wb") as f:
                for chunk in self.store.open_read(path):
                    got += len(chunk)
                    if got > self.max_artifact_bytes:
                        raise ValueError(
                            f"artifact {aid} is larger in the store than recorded ({size} bytes)"
                        )
                    f.write(chunk)
            if kind == "metrics" and tarfile.is_tarfile(local):
                done = self.importer.import_mlruns(aid, local, Path(tmp) / "unpacked", pid, run_id, eid)
                if done is not None:
                    return "done", done
            self.client.log_artifact(run_id, str(local), subdir)
        if tags:
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        return "done", None
