"""The MLflow bridge: every point of every task becomes an MLflow run (issue 7).

Why a polling background thread: MLflow calls take ~0.1 s each and MLflow may be down, so they
must stay off the request/job path. The bridge reads the database and writes to MLflow; the
job path only reads the ``mlflow_runs`` table (the run id the payload may read, for links) and
never waits for a run: the payload logs with MLflow into ``./mlruns`` in its working directory,
the agent ships that store as a metrics artifact, and the bridge imports it (below) once the
run exists. So a tracking server that starts late or is down loses nothing the payload logged.

Durability (the outbox is the database itself):
- a point with no ``mlflow_runs`` row still needs its run: the bridge creates the run (tags
  ``phpo.*``, params = the point) and then records the row;
- a row ``synced='open'`` whose point has ended still needs its final loss/metrics/status;
  the bridge writes them (one ``log_batch`` + ``set_terminated``) and marks it ``done``;
- the intermediate values of a point (``sdk.report_intermediate``, stored with the agents'
  heartbeats) are the run's metric ``intermediate``: sent while the point runs and, the rest,
  with its final result; how many a run has is MLflow's own history (read once per run where
  this bridge did not write them), so a crash or an outage neither loses nor doubles one;
- ``synced='error'``: MLflow refused that point (a 4xx, e.g. an invalid value): logged and
  skipped so one bad point cannot stop the bridge for everything else.
If MLflow is down a pass fails and the next pass retries; nothing is lost because nothing is
queued in memory. A crash between "run created" and "row recorded" cannot duplicate a run:
before creating runs the bridge searches the experiment for runs tagged ``phpo.point_id``.

One experiment per task, named after ``outDS`` (``task-<id>`` when the task has none).

Run status follows the point: a run is created SCHEDULED (``synced='queued'``) and becomes
RUNNING once the point's job is leased (``synced='open'``; back to SCHEDULED if the point
returns to the queue), then FINISHED/FAILED/KILLED when the point ends. A segmented task has
one parent run per segment (table ``mlflow_segment_runs``), terminated once the segment ended.

Artifacts (when the bridge has the artifact store): each point's logs and ``evaluationMetrics``
file are uploaded to its run (``logs/``, ``metrics/``), and once a segment has ended the
checkpoint of its best evaluated point goes to that point's run (``checkpoint/``). A metrics
file that is a tarball holding an ``mlruns/`` folder (the MLflow file-store layout the upstream
payloads write, and what the agent ships of ``./mlruns``) is imported instead: its runs' params,
tags, full metric histories and artifacts go into the point's run (one run in the tarball) or
into child runs nested under it (several). The
``mlflow_artifacts`` table records what was handled, so nothing is uploaded or imported twice;
marker tags in MLflow cover a crash between the upload and that record. Files over
``max_artifact_bytes`` are not uploaded: the run gets a tag with the phpo download route.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tarfile
import tempfile
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Any

from phpo.schemas.api import API_PREFIX
from phpo.schemas.archives import ArchiveError, ArchiveLimits, extract
from sqlalchemy import and_, exists, or_, select
from sqlalchemy.orm import aliased

from ..db.engine import Database, utcnow
from ..db.tables import (
    ArtifactRow,
    JobRow,
    MlflowArtifactRow,
    MlflowRunRow,
    MlflowSegmentRunRow,
    PointRow,
    SegmentRow,
    TaskRow,
)

log = logging.getLogger(__name__)

ENDED = ("evaluated", "failed", "cancelled")
STATUS = {"evaluated": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}
_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-. /]")
_NAME_BAD = re.compile(r"[^A-Za-z0-9._+\-=]+")
PARAM_MAX = 6000
INTERMEDIATE_KEY = "intermediate"  # the metric whose history holds the sdk.report_intermediate values
TASK_ENDED = ("finished", "failed", "cancelled")
MAX_ARTIFACT_BYTES = 200 * 2**20  # default; PHPO_MLFLOW_MAX_ARTIFACT_MB overrides
MAX_MLRUNS_BYTES = 512 * 2**20  # what an mlruns/ tarball may unpack to
MAX_MLRUNS_MEMBERS = 200_000
MAX_MLRUNS_SKIPPED_BYTES = 8 * 2**30  # what such a tarball holds besides its mlruns/, read past
MAX_IMPORT_METRICS = 500_000  # metric history entries taken from one tarball
# tags of an imported run that would re-wire or rename the run they are copied to
_SKIP_TAGS = ("mlflow.parentRunId", "mlflow.rootRunId", "mlflow.runName")


def experiment_name(task_id: int, spec: dict[str, Any] | None) -> str:
    return (spec or {}).get("outDS") or f"task-{task_id}"


def _key(k: str) -> str:
    return _KEY_BAD.sub("_", str(k))[:250] or "_"


def run_name(point_id: int) -> str:
    """The point's run is named as the CLI names the point (``phpo show``/``best``: "point 6")."""
    return f"point-{point_id}"


def param_value(v: Any) -> str:
    """A point's value as an MLflow param, in the form ``mlflow.log_params`` gives it (``str``),
    so a payload that logs its point again (upstream payloads do) writes the same value:
    MLflow refuses to change a param, and ``True`` logged as "true" would be a change."""
    return str(v)[:PARAM_MAX]


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _on_the_curve(values: list[Any] | None) -> list[Any]:
    """The intermediate values that go to MLflow: a value the agent could not send (NaN, inf)
    arrives as null and has no place on the curve. ``MlflowBridge._sent`` counts entries of
    this list, so it matches the length of the run's history after a restart."""
    return [v for v in values or () if v.get("value") is not None]


class MlflowBridge:
    """Background thread syncing points to an MLflow tracking server at ``uri``."""

    def __init__(self, db: Database, uri: str, interval: float = 0.5, batch: int = 200, store: Any = None,
                 max_artifact_bytes: int | None = None):
        # fail fast when the tracking server is down: the next pass retries anyway
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow.tracking import MlflowClient

        self.db = db
        self.uri = uri
        self.interval = interval
        self.batch = batch
        self.store = store  # the ArtifactStore: logs, metrics files and checkpoints go to the runs
        if max_artifact_bytes is None:
            mb = os.environ.get("PHPO_MLFLOW_MAX_ARTIFACT_MB")
            try:
                max_artifact_bytes = int(float(mb) * 2**20) if mb else MAX_ARTIFACT_BYTES
            except ValueError:
                raise ValueError(f"PHPO_MLFLOW_MAX_ARTIFACT_MB={mb!r}: give a number of MB") from None
        self.max_artifact_bytes = max_artifact_bytes
        self.artifact_batch = 20  # uploads are slow: a few per pass, so runs are never held up long
        self.slow_every = 5.0  # seconds between looks for ended segments (parent runs, best checkpoints)
        self._next_slow = 0.0
        self._art_floor = 0  # every log/metrics artifact with an id at or below it is handled
        self._floor_reset = 0.0
        self.client = MlflowClient(tracking_uri=uri)
        self.healthy = False  # the last pass reached MLflow
        self._experiments: dict[int, str] = {}
        # task id -> {point id: run id} of runs in MLflow not yet recorded here; a task's runs are
        # searched (by tag phpo.point_id) before its first run is created, so a crash between
        # "created" and "recorded" does not duplicate runs
        self._known: dict[int, dict[int, str]] = {}
        self._parents: dict[tuple[int, int], str] = {}  # (task id, segment idx) -> parent run id
        # point id -> how many of its intermediate values its run has (MLflow's own history is
        # read once where this bridge did not create the run or write them itself)
        self._sent: dict[int, int] = {}
        self._inter_cursor = 0  # running points are visited in id order, a batch per pass
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
                self._sent.clear()  # a batch may have been written in part: MLflow's history tells
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
        """Create missing runs, follow leases (SCHEDULED/RUNNING), finish ended runs, then send
        artifacts. Returns whether there may be more work."""
        a = self._create_runs()
        b = self._sync_status()
        self._sync_intermediate()
        c = self._finish_runs()
        busy = a >= self.batch or b >= self.batch or c >= self.batch
        if self.store is not None:
            busy = self._sync_artifacts() >= self.artifact_batch or busy
        if time.monotonic() >= self._next_slow:
            more = self._finish_parents() >= self.batch
            if self.store is not None:
                more = self._sync_checkpoints() >= self.artifact_batch or more
            if more:
                busy = True
            else:
                self._next_slow = time.monotonic() + self.slow_every
        return busy

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
                       SegmentRow.name, PointRow.state, SegmentRow.id)
                .outerjoin(SegmentRow, (SegmentRow.task_id == PointRow.task_id)
                           & (SegmentRow.idx == PointRow.segment_idx))
                .outerjoin(MlflowRunRow, MlflowRunRow.point_id == PointRow.id)
                .where(MlflowRunRow.point_id.is_(None))
                .order_by(PointRow.id).limit(self.batch)
            ).all()
            # a task's spec is decoded once per batch, not once per point (it lists all segments)
            tids = sorted({r[1] for r in rows})
            specs = dict(s.execute(select(TaskRow.id, TaskRow.spec).where(TaskRow.id.in_(tids))).all()) if tids else {}
        if not rows:
            return 0
        for pid, tid, seg_idx, serial, params, seg_name, state, seg_id in rows:
            spec = specs.get(tid)
            eid = self.experiment_id(tid, spec)
            if tid not in self._known:  # once per task and bridge life, and again after any failure
                self._known[tid] = self._existing(eid, tid)
            run_id = self._known[tid].get(pid)
            synced = "open"
            try:
                parent = (self._parent(eid, tid, seg_idx, seg_name, seg_id)
                          if (spec or {}).get("segments") and seg_id is not None else None)
                run_id = run_id or self._new_run(eid, tid, pid, seg_idx, serial, params, seg_name, parent)
                self._known[tid][pid] = run_id
                if state == "ready":  # waiting for a job; a leased or ended point keeps RUNNING
                    self.client.update_run(run_id, status="SCHEDULED")
                    synced = "queued"
            except RestException as e:  # MLflow refused this point (not: MLflow down); skip it, not all
                log.warning("mlflow bridge: point %d cannot become a run: %s", pid, e)
                run_id, synced = run_id or "", "error"
            with self.db.write() as s:
                if s.get(MlflowRunRow, pid) is None:
                    s.add(MlflowRunRow(point_id=pid, task_id=tid, experiment_id=eid, run_id=run_id, synced=synced,
                                       updated_at=utcnow()))
            self._known[tid].pop(pid, None)
        return len(rows)

    def _parent(self, eid: str, tid: int, seg_idx: int, seg_name: str | None, seg_id: int) -> str:
        """The segment's parent run (segmented tasks): its points' runs are nested under it.
        Recorded in ``mlflow_segment_runs``, which also says when it still needs terminating."""
        got = self._parents.get((tid, seg_idx))
        if got is None:
            with self.db.read() as s:
                got = s.execute(select(MlflowSegmentRunRow.run_id)
                                .where(MlflowSegmentRunRow.segment_id == seg_id)).scalar_one_or_none()
            if got is not None:
                self._parents[(tid, seg_idx)] = got
                return got
            found = self.client.search_runs(
                [eid], filter_string=f"tags.`phpo.task_id` = '{tid}' and tags.`phpo.segment_parent` = '{seg_idx}'",
                max_results=1)
            if found:
                got = found[0].info.run_id
            else:
                tags = {"phpo.task_id": str(tid), "phpo.segment_parent": str(seg_idx),
                        "phpo.segment_id": str(seg_idx), "phpo.segment": seg_name or ""}
                got = self.client.create_run(eid, tags=tags, run_name=seg_name or f"segment-{seg_idx}").info.run_id
            with self.db.write() as s:  # found or created: from now on the table knows it
                if s.get(MlflowSegmentRunRow, seg_id) is None:
                    s.add(MlflowSegmentRunRow(segment_id=seg_id, task_id=tid, experiment_id=eid, run_id=got,
                                              synced="open", updated_at=utcnow()))
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
        run_id = self.client.create_run(eid, tags=tags, run_name=run_name(pid)).info.run_id
        self._sent[pid] = 0  # a new run: no intermediate value in it yet
        ps = [Param(_key(k), param_value(v)) for k, v in (params or {}).items()]
        if ps:
            self.client.log_batch(run_id, params=ps)
        return run_id

    def _sync_status(self) -> int:
        """SCHEDULED -> RUNNING when the point's job is leased; back to SCHEDULED when the point
        returned to the queue (its job failed or its lease expired)."""
        from mlflow.exceptions import RestException

        rows = []
        with self.db.read() as s:  # two queries, each led by the index on ``synced``
            for synced, state in (("queued", "leased"), ("open", "ready")):
                rows += s.execute(
                    select(MlflowRunRow.point_id, MlflowRunRow.run_id, MlflowRunRow.synced)
                    .join(PointRow, PointRow.id == MlflowRunRow.point_id)
                    .where(MlflowRunRow.synced == synced, PointRow.state == state)
                    .order_by(MlflowRunRow.point_id).limit(self.batch)
                ).all()
        for pid, run_id, synced in rows:
            to = "open" if synced == "queued" else "queued"
            try:
                self.client.update_run(run_id, status="RUNNING" if to == "open" else "SCHEDULED")
            except RestException as e:  # MLflow refused (e.g. the run was deleted there): leave it
                log.warning("mlflow bridge: run %s of point %d: status not updated: %s", run_id, pid, e)
            with self.db.write() as s:
                row = s.get(MlflowRunRow, pid)
                if row is not None and row.synced == synced:
                    row.synced, row.updated_at = to, utcnow()
        return len(rows)

    def _new_intermediate(self, pid: int, run_id: str, values: list[Any] | None, now: int) -> list[Any]:
        """The point's intermediate values (``sdk.report_intermediate``) its run does not have
        yet, as entries of the metric ``intermediate`` (step = the reported step; the time is
        when the bridge sends it)."""
        from mlflow.entities import Metric

        values = _on_the_curve(values)
        sent = self._sent.get(pid)
        if sent is None:
            sent = len(self.client.get_metric_history(run_id, INTERMEDIATE_KEY)) if values else 0
            self._sent[pid] = sent
        return [Metric(INTERMEDIATE_KEY, float(v["value"]), now, int(v["step"])) for v in values[sent:]]

    def _sync_intermediate(self) -> int:
        """Learning curves, live: the intermediate values of running points go to their runs
        as they arrive with the agents' heartbeats (the rest is sent with the final result)."""
        from mlflow.exceptions import RestException

        with self.db.read() as s:
            rows = s.execute(
                select(MlflowRunRow.point_id, MlflowRunRow.run_id, PointRow.intermediate)
                .join(PointRow, PointRow.id == MlflowRunRow.point_id)
                .where(MlflowRunRow.synced == "open", PointRow.state == "leased",
                       MlflowRunRow.point_id > self._inter_cursor)
                .order_by(MlflowRunRow.point_id).limit(self.batch)
            ).all()
        self._inter_cursor = rows[-1][0] if len(rows) >= self.batch else 0
        n = 0
        for pid, run_id, values in rows:
            values = _on_the_curve(values)
            if not values or len(values) <= self._sent.get(pid, -1):
                continue
            ms = self._new_intermediate(pid, run_id, values, int(time.time() * 1000))
            if not ms:
                continue
            try:
                for i in range(0, len(ms), 1000):
                    self.client.log_batch(run_id, metrics=ms[i:i + 1000])
            except RestException as e:  # refused (e.g. the run was deleted there): its final pass retries
                log.warning("mlflow bridge: intermediate values of point %d not written to run %s: %s",
                            pid, run_id, e)
                self._sent.pop(pid, None)
                continue
            self._sent[pid] = len(values)
            n += len(ms)
        return n

    def _finish_runs(self) -> int:
        from mlflow.entities import Metric, RunTag
        from mlflow.exceptions import RestException

        with self.db.read() as s:
            rows = s.execute(
                select(MlflowRunRow.point_id, MlflowRunRow.run_id, PointRow.state, PointRow.loss, PointRow.metrics,
                       PointRow.attempts, PointRow.site, PointRow.error, JobRow.agent, PointRow.intermediate)
                .join(PointRow, PointRow.id == MlflowRunRow.point_id)
                .outerjoin(JobRow, JobRow.id == PointRow.job_id)
                .where(MlflowRunRow.synced.in_(("open", "queued")), PointRow.state.in_(ENDED))
                .order_by(MlflowRunRow.point_id).limit(self.batch)
            ).all()
        for pid, run_id, state, loss, metrics, attempts, site, error, agent, values in rows:
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
                curve = self._new_intermediate(pid, run_id, values, now)
                for i in range(0, len(curve), 1000):  # MLflow takes 1000 metrics per batch
                    self.client.log_batch(run_id, metrics=curve[i:i + 1000])
                self.client.log_batch(run_id, metrics=ms, tags=tags)
                self.client.set_terminated(run_id, STATUS[state])
            except RestException as e:  # MLflow refused this result (not: MLflow down); skip it, not all
                log.warning("mlflow bridge: the result of point %d cannot be written to run %s: %s", pid, run_id, e)
                done = "error"
            with self.db.write() as s:
                row = s.get(MlflowRunRow, pid)
                if row is not None:
                    row.synced, row.updated_at = done, utcnow()
            self._sent.pop(pid, None)
        return len(rows)

    # ------------------------------------------------------------ artifacts

    def _mlflow_up(self) -> bool:
        try:
            self.client.search_experiments(max_results=1)
            return True
        except Exception:  # noqa: BLE001
            return False

    def _record(self, art_id: int, tid: int, pid: int | None, kind: str, run_id: str, status: str,
                detail: str | None = None) -> None:
        with self.db.write() as s:
            if s.get(MlflowArtifactRow, art_id) is None:
                s.add(MlflowArtifactRow(artifact_id=art_id, task_id=tid, point_id=pid, kind=kind, run_id=run_id,
                                        status=status, detail=detail[:4000] if detail else None, updated_at=utcnow()))

    def _sync_artifacts(self) -> int:
        """Each point's logs and metrics file to its run. Artifacts are never changed once written,
        so a floor (every id at or below it is handled) spares a scan of the whole table per pass;
        it is reset now and then, since on PostgreSQL ids may commit out of order."""
        now = time.monotonic()
        if now >= self._floor_reset:
            self._art_floor, self._floor_reset = 0, now + 60
        with self.db.read() as s:
            rows = s.execute(
                select(ArtifactRow.id, ArtifactRow.kind, ArtifactRow.name, ArtifactRow.size, ArtifactRow.path,
                       ArtifactRow.task_id, ArtifactRow.point_id, MlflowRunRow.run_id, MlflowRunRow.experiment_id)
                .outerjoin(MlflowRunRow, MlflowRunRow.point_id == ArtifactRow.point_id)
                .outerjoin(MlflowArtifactRow, MlflowArtifactRow.artifact_id == ArtifactRow.id)
                .where(ArtifactRow.id > self._art_floor, ArtifactRow.kind.in_(("log", "metrics")),
                       ArtifactRow.point_id.is_not(None), MlflowArtifactRow.artifact_id.is_(None))
                .order_by(ArtifactRow.id).limit(10 * self.artifact_batch)
            ).all()
        waiting: int | None = None  # the first artifact whose point has no run yet
        sent = 0
        last = self._art_floor
        for aid, kind, name, size, path, tid, pid, run_id, eid in rows:
            if run_id is None:
                waiting = aid if waiting is None else waiting
                continue
            if sent >= self.artifact_batch:
                break
            self._send(aid, kind, name, size, path, tid or 0, pid, run_id, eid, "logs" if kind == "log" else "metrics")
            sent += 1
            last = aid
        if waiting is not None:
            last = min(last, waiting - 1)
        self._art_floor = max(self._art_floor, last)
        return sent

    def _ended_segment(self) -> Any:
        """SQL: the ``SegmentRow`` has ended (it is finished or its task has ended, and
        none of its points waits for or runs in a job)."""
        live = aliased(PointRow)
        return and_(
            or_(SegmentRow.finished.is_(True), TaskRow.state.in_(TASK_ENDED)),
            ~exists().where(live.task_id == SegmentRow.task_id, live.segment_idx == SegmentRow.idx,
                            live.state.in_(("ready", "leased"))))

    def _finish_parents(self) -> int:
        """Terminate the parent run of each segment that has ended: KILLED/FAILED when its task
        was cancelled/failed before the segment finished, else FINISHED."""
        from mlflow.exceptions import RestException

        with self.db.read() as s:
            rows = s.execute(
                select(MlflowSegmentRunRow.segment_id, MlflowSegmentRunRow.run_id, SegmentRow.finished, TaskRow.state)
                .join(SegmentRow, SegmentRow.id == MlflowSegmentRunRow.segment_id)
                .join(TaskRow, TaskRow.id == SegmentRow.task_id)
                .where(MlflowSegmentRunRow.synced == "open", self._ended_segment())
                .limit(self.batch)
            ).all()
        for seg_id, run_id, finished, task_state in rows:
            status = "FINISHED" if finished or task_state == "finished" else (
                "KILLED" if task_state == "cancelled" else "FAILED")
            try:
                self.client.set_terminated(run_id, status)
            except RestException as e:
                log.warning("mlflow bridge: parent run %s of segment %d not terminated: %s", run_id, seg_id, e)
            with self.db.write() as s:
                row = s.get(MlflowSegmentRunRow, seg_id)
                if row is not None:
                    row.synced, row.updated_at = "done", utcnow()
        return len(rows)

    def _sync_checkpoints(self) -> int:
        """Once a segment has ended (finished, or its task ended, and no point is waiting or
        running), the checkpoint of its best evaluated point goes to that point's run; the other
        points' checkpoints are recorded as skipped, so each segment is looked at once."""
        with self.db.read() as s:
            segs = s.execute(
                select(PointRow.task_id, PointRow.segment_idx).distinct()
                .join(TaskRow, TaskRow.id == PointRow.task_id)
                .join(ArtifactRow, ArtifactRow.id == PointRow.checkpoint_artifact_id)
                .join(SegmentRow, (SegmentRow.task_id == PointRow.task_id) & (SegmentRow.idx == PointRow.segment_idx))
                .outerjoin(MlflowArtifactRow, MlflowArtifactRow.artifact_id == PointRow.checkpoint_artifact_id)
                .where(PointRow.state.in_(ENDED), MlflowArtifactRow.artifact_id.is_(None), self._ended_segment())
                .limit(self.artifact_batch)
            ).all()
        for tid, seg_idx in segs:
            here = (PointRow.task_id == tid, PointRow.segment_idx == seg_idx)
            with self.db.read() as s:
                spec = s.execute(select(TaskRow.spec).where(TaskRow.id == tid)).scalar_one()
                maximize = ((spec or {}).get("directions") or ["minimize"])[0] == "maximize"
                best = s.execute(
                    select(PointRow.id).where(*here, PointRow.state == "evaluated", PointRow.loss_value.is_not(None))
                    .order_by(PointRow.loss_value.desc() if maximize else PointRow.loss_value.asc(), PointRow.id)
                    .limit(1)).scalar_one_or_none()
                cands = s.execute(
                    select(PointRow.id, ArtifactRow.id, ArtifactRow.name, ArtifactRow.size, ArtifactRow.path,
                           MlflowRunRow.run_id, MlflowRunRow.experiment_id)
                    .join(ArtifactRow, ArtifactRow.id == PointRow.checkpoint_artifact_id)
                    .outerjoin(MlflowRunRow, MlflowRunRow.point_id == PointRow.id)
                    .outerjoin(MlflowArtifactRow, MlflowArtifactRow.artifact_id == ArtifactRow.id)
                    .where(*here, PointRow.state.in_(ENDED), MlflowArtifactRow.artifact_id.is_(None))
                ).all()
            for pid, aid, name, size, path, run_id, eid in cands:
                if pid != best:
                    self._record(aid, tid, pid, "checkpoint", run_id or "", "skipped",
                                 "not the best evaluated point of its segment")
                elif run_id is not None:  # else: its run is not created yet; the next look sends it
                    self._send(aid, "checkpoint", name, size, path, tid, pid, run_id, eid, "checkpoint",
                               {"phpo.best_in_segment": "true", "phpo.checkpoint_artifact_id": str(aid)})
        return len(segs)

    def _send(self, aid: int, kind: str, name: str, size: int, path: str, tid: int, pid: int | None, run_id: str,
              eid: str, subdir: str, tags: dict[str, str] | None = None) -> None:
        """One phpo artifact to MLflow, then its outbox row. A failure that is this artifact's
        own (a broken tarball, a refused value) is recorded as 'error' and tagged on the run; a
        failure while MLflow is unreachable propagates, and the pass is retried."""
        if not run_id:
            self._record(aid, tid, pid, kind, "", "skipped", "the point has no MLflow run")
            return
        try:
            status, detail = self._put(aid, kind, name, size, path, pid, run_id, eid, subdir, tags or {})
        except Exception as e:  # noqa: BLE001
            if not self._mlflow_up():
                raise
            status, detail = "error", f"{type(e).__name__}: {e}"
            log.warning("mlflow bridge: artifact %d (%s %s) not sent to run %s: %s", aid, kind, name, run_id, detail)
            try:
                self.client.set_tag(run_id, f"phpo.artifact_error.{aid}", f"{name}: {detail}"[:PARAM_MAX])
            except Exception:  # noqa: BLE001 - the record below is what counts
                pass
        self._record(aid, tid, pid, kind, run_id, status, detail)

    def _put(self, aid: int, kind: str, name: str, size: int, path: str, pid: int | None, run_id: str, eid: str,
             subdir: str, tags: dict[str, str]) -> tuple[str, str | None]:
        from mlflow.entities import RunTag

        if size > self.max_artifact_bytes:
            why = (f"{name}: {size} bytes, over the MLflow bridge's limit of {self.max_artifact_bytes} bytes; "
                   f"download it from phpo: GET {API_PREFIX}/artifacts/{aid}")
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()]
                                  + [RunTag(f"phpo.artifact_skipped.{aid}", why)])
            return "skipped", why
        with tempfile.TemporaryDirectory(prefix="phpo-mlflow-") as tmp:
            local = Path(tmp) / (_NAME_BAD.sub("_", PurePosixPath(name).name)[-150:].lstrip(".") or "artifact")
            got = 0
            with open(local, "wb") as f:
                for chunk in self.store.open_read(path):
                    got += len(chunk)
                    if got > self.max_artifact_bytes:
                        raise ValueError(f"artifact {aid} is larger in the store than recorded ({size} bytes)")
                    f.write(chunk)
            if kind == "metrics" and tarfile.is_tarfile(local):
                done = self._import_mlruns(aid, local, Path(tmp) / "unpacked", pid, run_id, eid)
                if done is not None:
                    return "done", done
            self.client.log_artifact(run_id, str(local), subdir)
        if tags:
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        return "done", None

    # ------------------------------------------------------------ mlruns/ tarballs (upstream payloads)

    def _import_mlruns(self, aid: int, tarball: Path, scratch: Path, pid: int | None, run_id: str,
                       eid: str) -> str | None:
        """Import the runs of an ``mlruns/`` tarball; None when it holds no run (then the file is
        uploaded as it is). Idempotent: the point's run gets the tag ``phpo.imported.<artifact>``
        after the import; child runs are found again by ``phpo.import_artifact``, and a metric
        entry already in the target run is not written twice."""
        from mlflow.entities import ViewType

        root = extract_mlruns(tarball, scratch)
        if root is None:
            return None
        src = _file_store(root)
        runs = source_runs(src)
        if not runs:
            return None
        budget = [MAX_IMPORT_METRICS]
        if len(runs) == 1:
            r = runs[0]
            marker = f"phpo.imported.{aid}"
            target = self.client.get_run(run_id)
            if marker in target.data.tags:
                return "already imported into the point's run"
            self._copy_run(src, r, target, budget, {marker: r.info.run_id}, _run_dir(root, r))
            return "1 run imported into the point's run"
        found: dict[str, Any] = {}
        token = None
        while True:
            page = self.client.search_runs([eid], filter_string=f"tags.`phpo.import_artifact` = '{aid}'",
                                           run_view_type=ViewType.ALL, max_results=1000, page_token=token)
            for c in page:
                found.setdefault(c.data.tags.get("phpo.import_source", ""), c)
            token = page.token
            if not token:
                break
        made: dict[str, str] = {}
        for r in parents_first(runs):
            sid = r.info.run_id
            child = found.get(sid)
            if child is None:
                parent = made.get(r.data.tags.get("mlflow.parentRunId", ""), run_id)
                tags = {"mlflow.parentRunId": parent, "phpo.parent_point_id": str(pid),
                        "phpo.import_artifact": str(aid), "phpo.import_source": sid}
                child = self.client.create_run(eid, start_time=r.info.start_time, tags=tags,
                                               run_name=r.info.run_name or None)
            made[sid] = child.info.run_id
            if child.data.tags.get("phpo.import_complete") == "true":
                continue
            self._copy_run(src, r, child, budget, {}, _run_dir(root, r))
            status = r.info.status if r.info.status in ("FINISHED", "FAILED", "KILLED") else "FINISHED"
            self.client.set_terminated(child.info.run_id, status, end_time=r.info.end_time)
            self.client.set_tag(child.info.run_id, "phpo.import_complete", "true")
        return f"{len(runs)} runs imported as child runs of the point's run"

    def _copy_run(self, src: Any, r: Any, target: Any, budget: list[int], extra_tags: dict[str, str],
                  run_dir: Path) -> None:
        """Params, tags, full metric histories and artifacts of the file-store run ``r`` (unpacked
        in ``run_dir``) into ``target`` (written last: ``extra_tags``, the import's marker)."""
        from mlflow.entities import Metric, Param, RunTag

        tid = target.info.run_id
        have = target.data.params
        params: list[Param] = []
        conflicts: list[str] = []
        for k, v in r.data.params.items():
            k, v = _key(k), str(v)[:PARAM_MAX]
            if k in have:  # params are write-once in MLflow: the point's own value stays
                if have[k] != v:
                    conflicts.append(k)
                continue
            params.append(Param(k, v))
        tags = [RunTag(_key(k), str(v)[:PARAM_MAX]) for k, v in r.data.tags.items()
                if k not in _SKIP_TAGS and not k.startswith("phpo.")]
        if conflicts:
            tags.append(RunTag("phpo.import_param_conflicts", ",".join(conflicts)[:PARAM_MAX]))
        metrics: list[Metric] = []
        for key in sorted(r.data.metrics):
            hist = src.get_metric_history(r.info.run_id, key)
            k = _key(key)
            if k in target.data.metrics:  # a crash mid-import, or the payload logged it live as well
                seen = {(m.step, m.timestamp, m.value) for m in self.client.get_metric_history(tid, k)}
                hist = [m for m in hist if (m.step, m.timestamp, m.value) not in seen]
            if len(hist) > budget[0]:
                hist = hist[:budget[0]]
                tags.append(RunTag("phpo.import_truncated", f"metric histories cut at {MAX_IMPORT_METRICS} entries"))
            budget[0] -= len(hist)
            metrics.extend(Metric(k, m.value, m.timestamp, m.step) for m in hist)
        for i in range(0, len(params), 100):
            self.client.log_batch(tid, params=params[i:i + 100])
        for i in range(0, len(tags), 100):
            self.client.log_batch(tid, tags=tags[i:i + 100])
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(tid, metrics=metrics[i:i + 1000])
        arts = run_dir / "artifacts"
        files = [f for f in arts.rglob("*") if f.is_file()] if arts.is_dir() else []
        if files:  # what the payload logged with mlflow.log_artifact(s); a re-import overwrites the same paths
            size = sum(f.stat().st_size for f in files)
            if size > self.max_artifact_bytes:
                self.client.set_tag(tid, "phpo.import_artifacts_skipped",
                                    f"{len(files)} files, {size} bytes: over the MLflow bridge's limit of "
                                    f"{self.max_artifact_bytes} bytes")
            else:
                self.client.log_artifacts(tid, str(arts))
        if extra_tags:
            self.client.log_batch(tid, tags=[RunTag(k, v) for k, v in extra_tags.items()])


UnsafeTarball = ArchiveError  # the name this module's callers and tests know


def extract_mlruns(tarball: Path, dest: Path, max_bytes: int = MAX_MLRUNS_BYTES,
                   max_members: int = MAX_MLRUNS_MEMBERS) -> Path | None:
    """Unpack the ``mlruns/`` folder of ``tarball`` (at any depth; the first one found) under
    ``dest``; returns that folder, or None when there is none. Only regular files are written
    (the runs' ``artifacts/`` too: they go to the imported runs; links and devices are left out),
    by the same code as the agent's sandboxes and checkpoints
    (:func:`phpo.schemas.archives.extract`). A member with an absolute name or ``..``, more than
    ``max_members`` members or more than ``max_bytes`` unpacked: :class:`UnsafeTarball`."""
    base = dest / "mlruns"
    prefix: list[tuple[str, ...]] = []

    def select(parts: tuple[str, ...], m: tarfile.TarInfo) -> tuple[str, ...] | None:
        if "mlruns" not in parts:
            return None
        i = parts.index("mlruns")
        if not prefix:
            prefix.append(parts[:i + 1])
        elif parts[:i + 1] != prefix[0]:
            return None
        rel = parts[i + 1:]
        if not rel or not m.isfile():
            return None  # folders are made as needed
        return rel

    base.mkdir(parents=True, exist_ok=True)
    limits = ArchiveLimits(max_members=max_members, max_member_bytes=max_bytes, max_total_bytes=max_bytes,
                           max_skipped_bytes=MAX_MLRUNS_SKIPPED_BYTES)
    extract(tarball, base, limits=limits, select=select, skip_other=True)
    if not prefix:
        return None
    for meta in base.glob("*/*/meta.yaml"):  # a run: MLflow's reader wants all its folders, empty or not
        for sub in ("metrics", "params", "tags", "artifacts"):
            (meta.parent / sub).mkdir(exist_ok=True)
    return base


def _run_dir(root: Path, r: Any) -> Path:
    """Where the file-store run ``r`` was unpacked (its meta.yaml names the payload's own paths)."""
    return root / r.info.experiment_id / r.info.run_id


def _file_store(root: Path) -> Any:
    """MLflow's own reader of the file-store layout. MLflow 3 keeps it in maintenance mode and
    refuses to build it unless MLFLOW_ALLOW_FILE_STORE is set: set just for this read-only use."""
    from mlflow.store.tracking.file_store import FileStore

    old = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        return FileStore(str(root))
    finally:
        if old is None:
            os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
        else:
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = old


def source_runs(src: Any) -> list:
    """The active runs of every active experiment of a file store."""
    from mlflow.entities import ViewType

    exps = [e.experiment_id for e in src.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=1000)]
    runs: list = []
    token = None
    while exps:
        page = src.search_runs(exps, None, ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    return runs


def parents_first(runs: list) -> list:
    """Runs ordered so that a run nested under another run of the same list comes after it."""
    by_id = {r.info.run_id: r for r in runs}

    def depth(r: Any) -> int:
        d, seen = 0, set()
        while (p := r.data.tags.get("mlflow.parentRunId")) in by_id and p not in seen:
            seen.add(p)
            r, d = by_id[p], d + 1
        return d

    return sorted(runs, key=lambda r: (depth(r), r.info.start_time or 0, r.info.run_id))


def run_ids(s: Any, point_ids: list[int]) -> dict[int, str]:
    """point id -> MLflow run id, for the job path (a read of the outbox table, no MLflow call)."""
    if not point_ids:
        return {}
    return dict(s.execute(select(MlflowRunRow.point_id, MlflowRunRow.run_id)
                          .where(MlflowRunRow.point_id.in_(point_ids), MlflowRunRow.run_id != "")).all())
