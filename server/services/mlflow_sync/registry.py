"""The MLflow bridge's model registry: once a segment has ended, the model of its best point
(``sdk.save_model``, or an MLflow model the payload logged itself: the run's ``model/``) is
registered in MLflow's model registry, name from ``outDS``, one version per task (table
``mlflow_models``)."""

from __future__ import annotations

import json
import logging
from typing import Any

from phpo.schemas.models import model_name
from ...db.engine import Database, utcnow
from ...db.tables import MlflowModelRow, PointRow, TaskRow
from ...repositories import mlflow_bridge as repo
from ...repositories.points import best_point_id
from .common import PARAM_MAX, mlflow_key, mlflow_up, param_value

log = logging.getLogger("phpo.server.services.mlflow_bridge")


class ModelRegistry:
    """Registers the best models of ended segments, ``artifact_batch`` segments per pass."""

    def __init__(self, db: Database, client: Any, store: Any, artifact_batch: int = 20):
        self.db = db
        self.client = client
        self.store = store
        self.artifact_batch = artifact_batch

    def register_models(self) -> int:
        """Once a segment has ended and its best point's run is complete (result written, the
        payload's ``mlruns`` imported), the model in that run (``model/``; else in a child run
        imported from it) is registered: name from ``outDS`` (:func:`phpo.schemas.models.model_name`),
        one version per task, the point's params and loss as tags and description. Recorded in
        ``mlflow_models`` (one row per segment); a crash between MLflow's version and that record
        finds the version again by its run id, so a task never adds two versions."""
        with self.db.read() as s:
            segs = repo.segments_without_model(s, limit=self.artifact_batch)
        n = 0
        for seg_id, tid, idx, seg_name, spec, owner in segs:
            with self.db.read() as s:
                best = best_point_id(s, s.get(TaskRow, tid), idx)
                if best is None:
                    self._record_model(
                        seg_id, tid, idx, None, "", "no_model", detail="no point was evaluated"
                    )
                    continue
                run = repo.point_run(s, point_id=best)
                pending = repo.unsent_metrics_artifact(s, point_id=best)
                point = s.get(PointRow, best)
                params, loss = dict(point.params or {}), point.loss
            if (
                run is None
                or run[1] not in ("done", "error")
                or (pending is not None and self.store is not None)
            ):
                continue  # the run is not complete yet: the next look
            n += 1
            run_id = run[0]
            source_run = self._model_run(run_id, tid, best)
            if source_run is None:
                self._record_model(
                    seg_id,
                    tid,
                    idx,
                    best,
                    run_id,
                    "no_model",
                    detail="the best point's run holds no model/ (the payload called no sdk.save_model)",
                )
                continue
            name = model_name(
                tid, (spec or {}).get("outDS"), seg_name if (spec or {}).get("segments") else None
            )
            try:
                version, source = self._new_version(
                    name, source_run, tid, idx, seg_name, best, owner, params, loss
                )
            except Exception as e:  # noqa: BLE001
                if not mlflow_up(self.client):
                    raise
                log.warning("mlflow bridge: model of task %d segment %d not registered: %s", tid, idx, e)
                self._record_model(
                    seg_id, tid, idx, best, source_run, "error", detail=f"{type(e).__name__}: {e}"
                )
                continue
            self._record_model(seg_id, tid, idx, best, source_run, "registered", name, version, source)
        return n

    def _model_run(self, run_id: str, tid: int, pid: int) -> str | None:
        """The run holding the point's model: its own run, else a child run imported from it."""
        from mlflow.entities import ViewType

        def has_model(rid: str) -> bool:
            return any(a.path == "model/MLmodel" for a in self.client.list_artifacts(rid, "model"))

        if run_id and has_model(run_id):
            return run_id
        if not run_id:
            return None
        eid = self.client.get_run(run_id).info.experiment_id
        for c in self.client.search_runs(
            [eid],
            filter_string=f"tags.`phpo.parent_point_id` = '{pid}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=100,
        ):
            if has_model(c.info.run_id):
                return c.info.run_id
        return None

    def _new_version(
        self,
        name: str,
        run_id: str,
        tid: int,
        idx: int,
        seg_name: str | None,
        pid: int,
        owner: str,
        params: dict[str, Any],
        loss: Any,
    ) -> tuple[str, str]:
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(
                name,
                tags={"phpo.owner": owner},
                description="best models of the phpo tasks of this outDS (one version per task)",
            )
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        for v in self.client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
            return str(v.version), v.source  # registered before a crash: the same version
        source = self.client.get_run(run_id).info.artifact_uri.rstrip("/") + "/model"
        first = loss[0] if isinstance(loss, list) and loss else loss
        tags = {
            "phpo.task_id": str(tid),
            "phpo.segment_id": str(idx),
            "phpo.segment": seg_name or "",
            "phpo.point_id": str(pid),
            "phpo.owner": owner,
            "loss": json.dumps(loss),
            **{f"param.{mlflow_key(k)}": param_value(v) for k, v in params.items()},
        }
        desc = (
            f"phpo task {tid}"
            + (f", segment {seg_name}" if seg_name else "")
            + f": best point {pid}, loss {first}, params {json.dumps(params)[:PARAM_MAX]}"
        )
        mv = self.client.create_model_version(name, source, run_id=run_id, tags=tags, description=desc)
        return str(mv.version), source

    def _record_model(
        self,
        seg_id: int,
        tid: int,
        idx: int,
        pid: int | None,
        run_id: str,
        status: str,
        name: str | None = None,
        version: str | None = None,
        source: str | None = None,
        detail: str | None = None,
    ) -> None:
        with self.db.write() as s:
            if s.get(MlflowModelRow, seg_id) is None:
                s.add(
                    MlflowModelRow(
                        segment_id=seg_id,
                        task_id=tid,
                        segment_idx=idx,
                        point_id=pid,
                        run_id=run_id,
                        name=name,
                        version=version,
                        source=source,
                        status=status,
                        detail=detail[:4000] if detail else None,
                        updated_at=utcnow(),
                    )
                )
