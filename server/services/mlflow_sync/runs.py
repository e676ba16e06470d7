"""The MLflow bridge's runs: one experiment per task, one run per point (a parent run per segment
of a segmented task), the run's status following the point (SCHEDULED, RUNNING, then the final
status of ``STATUS``), intermediate values as the metric ``intermediate``, the final loss,
metrics and tags. The sync machine of each run is ``mlflow_runs.synced`` (``MlflowSyncState``),
written through :func:`set_state`."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from phpo.schemas.payload import experiment_name, run_name
from phpo.schemas.states import MlflowSyncState, PointState
from ...db.engine import Database, utcnow
from ...db.tables import MlflowRunRow, MlflowSegmentRunRow
from ...orchestration.transitions import set_state
from ...repositories import mlflow_bridge as repo
from .common import all_runs, INTERMEDIATE_KEY, PARAM_MAX, mlflow_key, number, on_the_curve, param_value

log = logging.getLogger("phpo.server.services.mlflow_bridge")

# the MLflow run status of each final point state (a new final point state needs its entry here)
STATUS = {
    PointState.evaluated: "FINISHED",
    PointState.failed: "FAILED",
    PointState.cancelled: "KILLED",
    PointState.pruned: "KILLED",
}  # a pruned run also gets the tag phpo.pruned=true


class RunSync:
    """Points to runs, in batches of ``batch`` rows per step; ``client``: an ``MlflowClient``."""

    def __init__(self, db: Database, client: Any, batch: int):
        self.db = db
        self.client = client
        self.batch = batch
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

    def forget(self) -> None:
        """After a failed pass: a run may have been created but not recorded (search again), a
        batch may have been written in part (MLflow's history tells)."""
        self._known.clear()
        self._sent.clear()

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
        out: dict[int, str] = {}
        for r in all_runs(self.client, eid, f"tags.`phpo.task_id` = '{task_id}'"):
            pid = r.data.tags.get("phpo.point_id")
            if pid is not None and pid.isdigit():
                out.setdefault(int(pid), r.info.run_id)
        return out

    def create_runs(self) -> int:
        from mlflow.exceptions import RestException

        with self.db.read() as s:
            rows = repo.points_without_run(s, limit=self.batch)
            # a task's spec is decoded once per batch, not once per point (it lists all segments)
            specs = repo.task_specs(s, task_ids=sorted({r[1] for r in rows}))
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
                parent = (
                    self._parent(eid, tid, seg_idx, seg_name, seg_id)
                    if (spec or {}).get("segments") and seg_id is not None
                    else None
                )
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
                    s.add(
                        MlflowRunRow(
                            point_id=pid,
                            task_id=tid,
                            experiment_id=eid,
                            run_id=run_id,
                            synced=synced,
                            updated_at=utcnow(),
                        )
                    )
            self._known[tid].pop(pid, None)
        return len(rows)

    def _parent(self, eid: str, tid: int, seg_idx: int, seg_name: str | None, seg_id: int) -> str:
        """The segment's parent run (segmented tasks): its points' runs are nested under it.
        Recorded in ``mlflow_segment_runs``, which also says when it still needs terminating."""
        got = self._parents.get((tid, seg_idx))
        if got is None:
            with self.db.read() as s:
                got = repo.segment_run_id(s, segment_id=seg_id)
            if got is not None:
                self._parents[(tid, seg_idx)] = got
                return got
            found = self.client.search_runs(
                [eid],
                filter_string=f"tags.`phpo.task_id` = '{tid}' and tags.`phpo.segment_parent` = '{seg_idx}'",
                max_results=1,
            )
            if found:
                got = found[0].info.run_id
            else:
                tags = {
                    "phpo.task_id": str(tid),
                    "phpo.segment_parent": str(seg_idx),
                    "phpo.segment_id": str(seg_idx),
                    "phpo.segment": seg_name or "",
                }
                got = self.client.create_run(
                    eid, tags=tags, run_name=seg_name or f"segment-{seg_idx}"
                ).info.run_id
            with self.db.write() as s:  # found or created: from now on the table knows it
                if s.get(MlflowSegmentRunRow, seg_id) is None:
                    s.add(
                        MlflowSegmentRunRow(
                            segment_id=seg_id,
                            task_id=tid,
                            experiment_id=eid,
                            run_id=got,
                            synced="open",
                            updated_at=utcnow(),
                        )
                    )
            self._parents[(tid, seg_idx)] = got
        return got

    def _new_run(
        self,
        eid: str,
        tid: int,
        pid: int,
        seg_idx: int,
        serial: int,
        params: dict | None,
        seg_name: str | None,
        parent: str | None = None,
    ) -> str:
        """Create the point's run (tags phpo.*) and log its params; returns the run id."""
        from mlflow.entities import Param

        tags = {
            "phpo.task_id": str(tid),
            "phpo.point_id": str(pid),
            "phpo.point_serial": str(serial),
            "phpo.segment_id": str(seg_idx),
            "phpo.segment": seg_name or "",
        }
        if parent:
            tags["mlflow.parentRunId"] = parent
        run_id = self.client.create_run(eid, tags=tags, run_name=run_name(pid)).info.run_id
        self._sent[pid] = 0  # a new run: no intermediate value in it yet
        ps = [Param(mlflow_key(k), param_value(v)) for k, v in (params or {}).items()]
        if ps:
            self.client.log_batch(run_id, params=ps)
        return run_id

    def sync_status(self) -> int:
        """SCHEDULED -> RUNNING when the point's job is leased; back to SCHEDULED when the point
        returned to the queue (its job failed or its lease expired)."""
        from mlflow.exceptions import RestException

        rows = []
        with self.db.read() as s:  # two queries, each led by the index on ``synced``
            for synced, state in (("queued", "leased"), ("open", "ready")):
                rows += repo.runs_to_restatus(s, synced=synced, point_state=state, limit=self.batch)
        for pid, run_id, synced in rows:
            to = "open" if synced == "queued" else "queued"
            try:
                self.client.update_run(run_id, status="RUNNING" if to == "open" else "SCHEDULED")
            except RestException as e:  # MLflow refused (e.g. the run was deleted there): leave it
                log.warning("mlflow bridge: run %s of point %d: status not updated: %s", run_id, pid, e)
            with self.db.write() as s:
                row = s.get(MlflowRunRow, pid)
                if row is not None:  # a row that moved on meanwhile is left as it is (a lost race)
                    set_state(row, to, expect={synced})
        return len(rows)

    def _new_intermediate(self, pid: int, run_id: str, values: list[Any] | None, now: int) -> list[Any]:
        """The point's intermediate values (``sdk.report_intermediate``) its run does not have
        yet, as entries of the metric ``intermediate`` (step = the reported step; the time is
        when the bridge sends it)."""
        from mlflow.entities import Metric

        values = on_the_curve(values)
        sent = self._sent.get(pid)
        if sent is None:
            sent = len(self.client.get_metric_history(run_id, INTERMEDIATE_KEY)) if values else 0
            self._sent[pid] = sent
        return [Metric(INTERMEDIATE_KEY, float(v["value"]), now, int(v["step"])) for v in values[sent:]]

    def sync_intermediate(self) -> int:
        """Learning curves, live: the intermediate values of running points go to their runs
        as they arrive with the agents' heartbeats (the rest is sent with the final result)."""
        from mlflow.exceptions import RestException

        with self.db.read() as s:
            rows = repo.running_points_intermediate(s, after=self._inter_cursor, limit=self.batch)
        self._inter_cursor = rows[-1][0] if len(rows) >= self.batch else 0
        n = 0
        for pid, run_id, values in rows:
            values = on_the_curve(values)
            if not values or len(values) <= self._sent.get(pid, -1):
                continue
            ms = self._new_intermediate(pid, run_id, values, int(time.time() * 1000))
            if not ms:
                continue
            try:
                for i in range(0, len(ms), 1000):
                    self.client.log_batch(run_id, metrics=ms[i : i + 1000])
            except RestException as e:  # refused (e.g. the run was deleted there): its final pass retries
                log.warning(
                    "mlflow bridge: intermediate values of point %d not written to run %s: %s", pid, run_id, e
                )
                self._sent.pop(pid, None)
                continue
            self._sent[pid] = len(values)
            n += len(ms)
        return n

    def finish_runs(self) -> int:
        from mlflow.entities import Metric, RunTag
        from mlflow.exceptions import RestException

        with self.db.read() as s:
            rows = repo.runs_to_finish(s, limit=self.batch)
        for pid, run_id, state, loss, metrics, attempts, site, error, agent, values in rows:
            now = int(time.time() * 1000)
            ms: list[Metric] = []
            if isinstance(loss, list):
                for i, v in enumerate(loss):
                    if number(v) is not None:
                        ms.append(Metric(f"loss_{i}", number(v), now, 0))
                loss = loss[0] if loss else None
            if number(loss) is not None:
                ms.append(Metric("loss", number(loss), now, 0))
            tags = [
                RunTag("phpo.state", state),
                RunTag("phpo.attempt", str(attempts + (state == "evaluated"))),
                RunTag("phpo.site", site or ""),
                RunTag("phpo.agent", agent or ""),
            ]
            if state == PointState.pruned:
                tags.append(RunTag("phpo.pruned", "true"))
            for k, v in (metrics or {}).items():
                if number(v) is not None:
                    ms.append(Metric(mlflow_key(k), number(v), now, 0))
                else:
                    tags.append(RunTag(f"phpo.metric.{mlflow_key(k)}", json.dumps(v)[:PARAM_MAX]))
            if error and state != "evaluated":
                tags.append(RunTag("phpo.error", error[:PARAM_MAX]))
            done = "done"
            try:
                curve = self._new_intermediate(pid, run_id, values, now)
                for i in range(0, len(curve), 1000):  # MLflow takes 1000 metrics per batch
                    self.client.log_batch(run_id, metrics=curve[i : i + 1000])
                self.client.log_batch(run_id, metrics=ms, tags=tags)
                self.client.set_terminated(run_id, STATUS[state])
            except RestException as e:  # MLflow refused this result (not: MLflow down); skip it, not all
                log.warning(
                    "mlflow bridge: the result of point %d cannot be written to run %s: %s", pid, run_id, e
                )
                done = "error"
            with self.db.write() as s:
                row = s.get(MlflowRunRow, pid)
                if row is not None:
                    set_state(row, done, expect={MlflowSyncState.open, MlflowSyncState.queued})
            self._sent.pop(pid, None)
        return len(rows)

    def finish_parents(self) -> int:
        """Terminate the parent run of each segment that has ended: KILLED/FAILED when its task
        was cancelled/failed before the segment finished, else FINISHED."""
        from mlflow.exceptions import RestException

        with self.db.read() as s:
            rows = repo.parents_to_finish(s, limit=self.batch)
        for seg_id, run_id, finished, task_state in rows:
            status = (
                "FINISHED"
                if finished or task_state == "finished"
                else ("KILLED" if task_state == "cancelled" else "FAILED")
            )
            try:
                self.client.set_terminated(run_id, status)
            except RestException as e:
                log.warning(
                    "mlflow bridge: parent run %s of segment %d not terminated: %s", run_id, seg_id, e
                )
            with self.db.write() as s:
                row = s.get(MlflowSegmentRunRow, seg_id)
                if row is not None:
                    set_state(row, MlflowSyncState.done, expect={MlflowSyncState.open})
        return len(rows)
