"""The MLflow bridge: every point of every task becomes an MLflow run (issue 7).

Why a polling background thread: MLflow calls take ~0.1 s each and MLflow may be down, so they
must stay off the request/job path. The bridge reads the database and writes to MLflow; the
job path only reads the ``mlflow_runs`` table (the run id handed to the payload).

Durability (the outbox is the database itself):
- a point with no ``mlflow_runs`` row still needs its run: the bridge creates the run (tags
  ``phpo.*``, params = the point) and then records the row;
- a row ``synced='open'`` whose point has ended still needs its final loss/metrics/status;
  the bridge writes them (one ``log_batch`` + ``set_terminated``) and marks it ``done``;
- ``synced='error'``: MLflow refused that point (a 4xx, e.g. an invalid value): logged and
  skipped so one bad point cannot stop the bridge for everything else.
If MLflow is down a pass fails and the next pass retries; nothing is lost because nothing is
queued in memory. A crash between "run created" and "row recorded" cannot duplicate a run:
before creating runs the bridge searches the experiment for runs tagged ``phpo.point_id``.

One experiment per task, named after ``outDS`` (``task-<id>`` when the task has none).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
from typing import Any

from sqlalchemy import select

from ..db.engine import Database, utcnow
from ..db.tables import JobRow, MlflowRunRow, PointRow, SegmentRow, TaskRow

log = logging.getLogger(__name__)

ENDED = ("evaluated", "failed", "cancelled")
STATUS = {"evaluated": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}
_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-. /]")
PARAM_MAX = 6000


def experiment_name(task_id: int, spec: dict[str, Any] | None) -> str:
    return (spec or {}).get("outDS") or f"task-{task_id}"


def _key(k: str) -> str:
    return _KEY_BAD.sub("_", str(k))[:250] or "_"


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


class MlflowBridge:
    """Background thread syncing points to an MLflow tracking server at ``uri``."""

    def __init__(self, db: Database, uri: str, interval: float = 0.5, batch: int = 200):
        # fail fast when the tracking server is down: the next pass retries anyway
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow.tracking import MlflowClient

        self.db = db
        self.uri = uri
        self.interval = interval
        self.batch = batch
        self.client = MlflowClient(tracking_uri=uri)
        self.healthy = False  # last pass reached MLflow; the broker then waits for runs to exist
        self._experiments: dict[int, str] = {}
        # task id -> {point id: run id} of runs in MLflow not yet recorded here; a task's runs are
        # searched (by tag phpo.point_id) before its first run is created, so a crash between
        # "created" and "recorded" does not duplicate runs
        self._known: dict[int, dict[int, str]] = {}
        self._parents: dict[tuple[int, int], str] = {}  # (task id, segment idx) -> parent run id
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="phpo-mlflow-bridge", daemon=True)

    # ------------------------------------------------------------ thread

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=15)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                busy = self.sync_once()
                if failures:
                    log.info("mlflow bridge: %s reachable again, catching up", self.uri)
                failures = 0
                self.healthy = True
            except Exception as e:  # noqa: BLE001 - MLflow down or failing: retry, never lose
                self.healthy = False
                self._known.clear()  # a run may have been created but not recorded: search again
                failures += 1
                if failures == 1 or failures % 60 == 0:
                    log.warning("mlflow bridge: %s unreachable or failing (%s); will retry", self.uri, e)
                busy = False
            if not busy:
                delay = self.interval if not failures else min(5.0, self.interval * 2 ** min(failures, 5))
                self._wake.wait(delay)
                self._wake.clear()

    # ------------------------------------------------------------ one pass

    def sync_once(self) -> bool:
        """Create missing runs, then finish ended ones. Returns whether there may be more work."""
        a = self._create_runs()
        b = self._finish_runs()
        return a >= self.batch or b >= self.batch

    def experiment_id(self, task_id: int, spec: dict[str, Any] | None) -> str:
        got = self._experiments.get(task_id)
        if got is not None:
            return got
        name = experiment_name(task_id, spec)
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            try:
                eid = self.client.create_experiment(name, tags={"phpo.task_id": str(task_id)})
            except Exception:  # noqa: BLE001 - created meanwhile by someone else
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    raise
                eid = exp.experiment_id
        else:
            eid = exp.experiment_id
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(eid)
        self._experiments[task_id] = eid
        return eid

    def _existing(self, eid: str, task_id: int) -> dict[int, str]:
        """point id -> run id of the task's runs already in MLflow (a crash may have left some)."""
        from mlflow.entities import ViewType

        out: dict[int, str] = {}
        token = None
        while True:
            page = self.client.search_runs([eid], filter_string=f"tags.`phpo.task_id` = '{task_id}'",
                                           run_view_type=ViewType.ALL, max_results=1000, page_token=token)
            for r in page:
                pid = r.data.tags.get("phpo.point_id")
                if pid is not None and pid.isdigit():
                    out.setdefault(int(pid), r.info.run_id)
            token = page.token
            if not token:
                return out

    def _create_runs(self) -> int:
        from mlflow.exceptions import RestException

        with self.db.read() as s:
            rows = s.execute(
                select(PointRow.id, PointRow.task_id, PointRow.segment_idx, PointRow.serial, PointRow.params,
                       TaskRow.spec, SegmentRow.name)
                .join(TaskRow, TaskRow.id == PointRow.task_id)
                .outerjoin(SegmentRow, (SegmentRow.task_id == PointRow.task_id)
                           & (SegmentRow.idx == PointRow.segment_idx))
                .outerjoin(MlflowRunRow, MlflowRunRow.point_id == PointRow.id)
                .where(MlflowRunRow.point_id.is_(None))
                .order_by(PointRow.id).limit(self.batch)
            ).all()
        if not rows:
            return 0
        for pid, tid, seg_idx, serial, params, spec, seg_name in rows:
            eid = self.experiment_id(tid, spec)
            if tid not in self._known:  # once per task and bridge life, and again after any failure
                self._known[tid] = self._existing(eid, tid)
            run_id = self._known[tid].get(pid)
            synced = "open"
            try:
                parent = self._parent(eid, tid, seg_idx, seg_name) if (spec or {}).get("segments") else None
                run_id = run_id or self._new_run(eid, tid, pid, seg_idx, serial, params, seg_name, parent)
                self._known[tid][pid] = run_id
            except RestException as e:  # MLflow refused this point (not: MLflow down); skip it, not all
                log.warning("mlflow bridge: point %d cannot become a run: %s", pid, e)
                run_id, synced = run_id or "", "error"
            with self.db.write() as s:
                if s.get(MlflowRunRow, pid) is None:
                    s.add(MlflowRunRow(point_id=pid, task_id=tid, experiment_id=eid, run_id=run_id, synced=synced,
                                       updated_at=utcnow()))
            self._known[tid].pop(pid, None)
        return len(rows)

    def _parent(self, eid: str, tid: int, seg_idx: int, seg_name: str | None) -> str:
        """The segment's parent run (segmented tasks): its points' runs are nested under it."""
        got = self._parents.get((tid, seg_idx))
        if got is None:
            found = self.client.search_runs(
                [eid], filter_string=f"tags.`phpo.task_id` = '{tid}' and tags.`phpo.segment_parent` = '{seg_idx}'",
                max_results=1)
            if found:
                got = found[0].info.run_id
            else:
                tags = {"phpo.task_id": str(tid), "phpo.segment_parent": str(seg_idx),
                        "phpo.segment_id": str(seg_idx), "phpo.segment": seg_name or ""}
                got = self.client.create_run(eid, tags=tags, run_name=seg_name or f"segment-{seg_idx}").info.run_id
            self._parents[(tid, seg_idx)] = got
        return got

    def _new_run(self, eid: str, tid: int, pid: int, seg_idx: int, serial: int, params: dict | None,
                 seg_name: str | None, parent: str | None = None) -> str:
        """Create the point's run (tags phpo.*) and log its params; returns the run id."""
        from mlflow.entities import Param

        tags = {"phpo.task_id": str(tid), "phpo.point_id": str(pid), "phpo.point_serial": str(serial),
                "phpo.segment_id": str(seg_idx), "phpo.segment": seg_name or ""}
        if parent:
            tags["mlflow.parentRunId"] = parent
        run_id = self.client.create_run(eid, tags=tags, run_name=f"{seg_name or 'point'}-{serial}").info.run_id
        ps = [Param(_key(k), (v if isinstance(v, str) else json.dumps(v))[:PARAM_MAX])
              for k, v in (params or {}).items()]
        if ps:
            self.client.log_batch(run_id, params=ps)
        return run_id

    def _finish_runs(self) -> int:
        from mlflow.entities import Metric, RunTag
        from mlflow.exceptions import RestException

        with self.db.read() as s:
            rows = s.execute(
                select(MlflowRunRow.point_id, MlflowRunRow.run_id, PointRow.state, PointRow.loss, PointRow.metrics,
                       PointRow.attempts, PointRow.site, PointRow.error, JobRow.agent)
                .join(PointRow, PointRow.id == MlflowRunRow.point_id)
                .outerjoin(JobRow, JobRow.id == PointRow.job_id)
                .where(MlflowRunRow.synced == "open", PointRow.state.in_(ENDED))
                .order_by(MlflowRunRow.point_id).limit(self.batch)
            ).all()
        for pid, run_id, state, loss, metrics, attempts, site, error, agent in rows:
            now = int(time.time() * 1000)
            ms: list[Metric] = []
            if isinstance(loss, list):
                for i, v in enumerate(loss):
                    if _num(v) is not None:
                        ms.append(Metric(f"loss_{i}", _num(v), now, 0))
                loss = loss[0] if loss else None
            if _num(loss) is not None:
                ms.append(Metric("loss", _num(loss), now, 0))
            tags = [RunTag("phpo.state", state), RunTag("phpo.attempt", str(attempts + (state == "evaluated"))),
                    RunTag("phpo.site", site or ""), RunTag("phpo.agent", agent or "")]
            for k, v in (metrics or {}).items():
                if _num(v) is not None:
                    ms.append(Metric(_key(k), _num(v), now, 0))
                else:
                    tags.append(RunTag(f"phpo.metric.{_key(k)}", json.dumps(v)[:PARAM_MAX]))
            if error and state != "evaluated":
                tags.append(RunTag("phpo.error", error[:PARAM_MAX]))
            done = "done"
            try:
                self.client.log_batch(run_id, metrics=ms, tags=tags)
                self.client.set_terminated(run_id, STATUS[state])
            except RestException as e:  # MLflow refused this result (not: MLflow down); skip it, not all
                log.warning("mlflow bridge: the result of point %d cannot be written to run %s: %s", pid, run_id, e)
                done = "error"
            with self.db.write() as s:
                row = s.get(MlflowRunRow, pid)
                if row is not None:
                    row.synced, row.updated_at = done, utcnow()
        return len(rows)


def run_ids(s: Any, point_ids: list[int]) -> dict[int, str]:
    """point id -> MLflow run id, for the job path (a read of the outbox table, no MLflow call)."""
    if not point_ids:
        return {}
    return dict(s.execute(select(MlflowRunRow.point_id, MlflowRunRow.run_id)
                          .where(MlflowRunRow.point_id.in_(point_ids), MlflowRunRow.run_id != "")).all())
