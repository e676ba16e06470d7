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
checkpoint of its best evaluated point goes to that point's run (``checkpoint/``), and the model
that point's payload saved is registered in MLflow's model registry (``mlflow_sync/registry.py``,
table ``mlflow_models``). A metrics
file that is a tarball holding an ``mlruns/`` folder (the MLflow file-store layout the upstream
payloads write, and what the agent ships of ``./mlruns``) is imported instead: its runs' params,
tags, full metric histories and artifacts go into the point's run (one run in the tarball) or
into child runs nested under it (several). The
``mlflow_artifacts`` table records what was handled, so nothing is uploaded or imported twice;
marker tags in MLflow cover a crash between the upload and that record. Files over
``max_artifact_bytes`` are not uploaded: the run gets a tag with the phpo download route.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from ..db.engine import Database
from ..repositories import mlflow_bridge as repo
from .background import BackgroundLoop
from .mlflow_sync.artifacts import ArtifactSync
from .mlflow_sync.common import MAX_ARTIFACT_BYTES, param_value
from .mlflow_sync.mlruns_import import UnsafeTarball, extract_mlruns
from .mlflow_sync.registry import ModelRegistry
from .mlflow_sync.runs import STATUS, RunSync

__all__ = ["STATUS", "MlflowBridge", "UnsafeTarball", "extract_mlruns", "param_value", "run_ids"]

log = logging.getLogger(__name__)


class MlflowBridge(BackgroundLoop):
    """Background thread syncing points to an MLflow tracking server at ``uri``: the runs
    (:class:`RunSync`), then the artifacts (:class:`ArtifactSync`), one pass at a time."""

    THREAD_NAME = "phpo-mlflow-bridge"
    JOIN_TIMEOUT = 15.0

    def __init__(
        self,
        db: Database,
        uri: str,
        interval: float = 0.5,
        batch: int = 200,
        store: Any = None,
        max_artifact_bytes: int | None = None,
    ):
        super().__init__()
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
        self.slow_every = 5.0  # seconds between looks for ended segments (parent runs, best checkpoints)
        self._next_slow = 0.0
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # the model registry too
        self.healthy = False  # the last pass reached MLflow
        self.runs = RunSync(db, self.client, batch)
        self.artifacts = (
            ArtifactSync(db, self.client, store, max_artifact_bytes) if store is not None else None
        )
        self.registry = ModelRegistry(db, self.client, store)

    @staticmethod
    def run_ids(s: Any, point_ids: list[int]) -> dict[int, str]:
        """The broker's read (see ``job_broker.MlflowRuns``): :func:`run_ids`."""
        return run_ids(s, point_ids)

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
                self.runs.forget()
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
        runs, arts = self.runs, self.artifacts
        a = runs.create_runs()
        b = runs.sync_status()
        runs.sync_intermediate()
        c = runs.finish_runs()
        busy = a >= self.batch or b >= self.batch or c >= self.batch
        if arts is not None:
            busy = arts.sync_artifacts() >= arts.artifact_batch or busy
        if time.monotonic() >= self._next_slow:
            more = runs.finish_parents() >= self.batch
            if arts is not None:
                more = arts.sync_checkpoints() >= arts.artifact_batch or more
            more = self.registry.register_models() >= self.registry.artifact_batch or more
            if more:
                busy = True
            else:
                self._next_slow = time.monotonic() + self.slow_every
        return busy


def run_ids(s: Any, point_ids: list[int]) -> dict[int, str]:
    """point id -> MLflow run id, for the job path (a read of the outbox table, no MLflow call)."""
    return repo.run_ids(s, point_ids=point_ids)
