"""Supervise a running job: heartbeats keep its lease and bring back the server's decisions
(cancel, pause, prune); a watch over the running payload acts on them, on its timeout and on
the agent's shutdown, and uploads its checkpoints meanwhile.

The heartbeat thread only records what it hears (:class:`JobSignals`); the job's own thread
decides what to do about it (:class:`Supervisor`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from typing import Any

from phpo.client.agent_api import AgentAPI, is_transient
from phpo.client.errors import Conflict, NotFound
from phpo.schemas.archives import open_beneath
from phpo.schemas.jobs import HeartbeatRequest, HeartbeatResponse, IntermediateReport, Job, JobPoint
from phpo.schemas.payload import CONTROL_FILE, INTERMEDIATE_FILE

from .checkpoints import CheckpointSaver
from .results import Outcome
from .runners.base import RunHandle
from .workdir import JobWorkdir

log = logging.getLogger("phpo.agent")


def heartbeat_request(reports: list[IntermediateReport]) -> HeartbeatRequest:
    """A heartbeat carrying ``reports``; values the payload reported as NaN or Infinity travel as
    null (JSON has neither, and the server refuses them), and the message says which, so a
    missing value on the server is explained rather than silent."""
    nulls = [r for r in reports if r.value is None]
    note = None
    if nulls:
        where = ", ".join(f"point {r.point_id} step {r.step}" for r in nulls[:10])
        more = f" and {len(nulls) - 10} more" if len(nulls) > 10 else ""
        note = f"intermediate values that were NaN or Infinity were sent as null: {where}{more}"
    return HeartbeatRequest(intermediate=reports, message=note)


def parse_intermediate_line(line: bytes) -> dict[str, Any]:
    """One line of the intermediate file: a JSON object (``step``, ``value``, optional
    ``point_id``) or plain ``STEP VALUE`` (any language can append it)."""
    text = line.decode(errors="replace").strip()
    if text.startswith("{"):
        return json.loads(text)
    step, value = text.split()
    return {"step": int(step), "value": float(value)}


class JobSignals:
    """What the heartbeats heard about one job, and which of its points runs now."""

    def __init__(self) -> None:
        self.done = threading.Event()  # the job has ended on the server: no more heartbeats
        self.lease_lost = threading.Event()
        self.cancelled = threading.Event()
        self.paused = threading.Event()  # the task is paused: no further point of this job starts
        self.stop_points: set[int] = set()  # pruned by the server (heartbeat answers)
        self.current_point: JobPoint | None = None
        self.lock = threading.Lock()

    def set_point(self, point: JobPoint | None) -> None:
        with self.lock:
            self.current_point = point

    def pruned_now(self) -> bool:
        with self.lock:
            return self.current_point is not None and self.current_point.point_id in self.stop_points

    def stop_before_next_point(self, agent_stopping: bool) -> bool:
        return agent_stopping or self.lease_lost.is_set() or self.cancelled.is_set() or self.paused.is_set()


class IntermediateReader:
    """New intermediate values since the last heartbeat: lines the SDK (or the payload) appended
    to the intermediate file, and of the payload's own MLflow metric (``--intermediateMetric``)."""

    def __init__(self, job: Job, workdir: JobWorkdir, signals: JobSignals):
        self.job = job
        self.rundir = workdir.rundir
        self.signals = signals
        self._point_ids = {p.point_id for p in job.points}
        self._offset = 0
        self._pending: list[IntermediateReport] = []
        self._metric_offsets: dict[str, int] = {}  # MLflow metric file -> bytes read

    def requeue(self, reports: list[IntermediateReport]) -> None:
        """Keep ``reports`` for the next heartbeat (this one did not get through)."""
        with self.signals.lock:
            self._pending = reports + self._pending

    def forget_metrics(self) -> None:
        """A new point starts with a fresh ``mlruns/``."""
        with self.signals.lock:  # the heartbeat thread reads and moves these offsets
            self._metric_offsets.clear()

    def collect(self) -> list[IntermediateReport]:
        with self.signals.lock:
            out, self._pending = self._pending, []
            point = self.signals.current_point
            lines = [*self._new_file_lines(), *self._metric_lines()]
            out.extend(r for line in lines if (r := self._report(line, point)) is not None)
            return out

    def _new_file_lines(self) -> list[bytes]:
        try:
            with os.fdopen(
                open_beneath(self.rundir, INTERMEDIATE_FILE, os.O_RDONLY | os.O_NONBLOCK), "rb"
            ) as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            data = b""
        end = data.rfind(b"\n")
        self._offset += end + 1
        return data[: end + 1].splitlines()

    def _metric_lines(self) -> list[bytes]:
        """New ``STEP VALUE`` lines of the payload's own MLflow metric: its file store keeps
        ``mlruns/EXP/RUN/metrics/NAME`` as ``TIMESTAMP VALUE STEP`` lines."""
        ev = self.job.evaluation
        name = ev.intermediate_metric if ev is not None else None
        out: list[bytes] = []
        if not name or "/" in name or name.startswith("."):
            return out
        for path in sorted((self.rundir / "mlruns").glob(f"*/*/metrics/{name}")):
            for line in self._new_metric_lines(str(path.relative_to(self.rundir))):
                parts = line.split()
                if len(parts) == 3:
                    out.append(parts[2] + b" " + parts[1])
        return out

    def _new_metric_lines(self, rel: str) -> list[bytes]:
        try:
            with os.fdopen(open_beneath(self.rundir, rel, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
                f.seek(self._metric_offsets.get(rel, 0))
                data = f.read()
        except OSError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self._metric_offsets[rel] = self._metric_offsets.get(rel, 0) + end + 1
        return data[: end + 1].splitlines()

    def _report(self, line: bytes, point: JobPoint | None) -> IntermediateReport | None:
        try:
            rec = parse_intermediate_line(line)
            pid = rec.get("point_id") or (point.point_id if point else None)
            if pid is None or int(pid) not in self._point_ids:
                # the server refuses a whole heartbeat naming a point of another job
                log.warning(
                    "job %d: ignoring an intermediate value for point %s, not in this job", self.job.id, pid
                )
                return None
            value = float(rec["value"])
            if not math.isfinite(value):
                log.warning(
                    "job %d: point %s reported %s at step %s; it is sent as null (JSON has "
                    "no NaN or Infinity)",
                    self.job.id,
                    pid,
                    value,
                    rec["step"],
                )
            return IntermediateReport(
                point_id=int(pid), step=int(rec["step"]), value=value if math.isfinite(value) else None
            )
        except (ValueError, KeyError, TypeError):
            log.warning("job %d: ignoring a bad intermediate line %r", self.job.id, line[:200])
            return None


class Heartbeat:
    """The thread that keeps a job's lease: every third of it, a heartbeat with the new
    intermediate values; the answer is recorded in :class:`JobSignals`, and the points the
    pruner stopped are written to the payload's control file."""

    def __init__(
        self, api: AgentAPI, job: Job, workdir: JobWorkdir, signals: JobSignals, reader: IntermediateReader
    ):
        self.api = api
        self.job = job
        self.workdir = workdir
        self.signals = signals
        self.reader = reader
        self._thread = threading.Thread(target=self._loop, name=f"hb-{job.id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)

    def flush(self, retry_seconds: float) -> None:
        """Send what the payload reported since the last heartbeat now, before its result (a
        short point may end between two heartbeats)."""
        reports = self.reader.collect()
        if not reports:
            return
        try:
            self.api.heartbeat(self.job.id, heartbeat_request(reports), retry_seconds=retry_seconds)
        except Exception as e:  # noqa: BLE001
            log.warning("job %d: %d intermediate value(s) not delivered: %s", self.job.id, len(reports), e)

    def _loop(self) -> None:
        interval = max(0.2, self.job.lease_seconds / 3)
        while not self.signals.done.wait(interval):
            try:
                resp = self._beat(interval)
            except (Conflict, NotFound) as e:
                log.error(
                    "job %d: the server no longer holds this job for us (%s); stopping it", self.job.id, e
                )
                self.signals.lease_lost.set()
                return
            if resp is not None:
                self._heard(resp)

    def _beat(self, interval: float) -> HeartbeatResponse | None:
        """One heartbeat; None when it did not get through (the next one tries again)."""
        reports = self.reader.collect()
        try:
            return self.api.heartbeat(self.job.id, heartbeat_request(reports), retry_seconds=interval)
        except (Conflict, NotFound):
            raise
        except Exception as e:  # noqa: BLE001
            if is_transient(e):  # keep the values for the next beat; a refused batch is dropped
                self.reader.requeue(reports)
            log.warning("job %d: heartbeat failed (%s); trying again in %.1f s", self.job.id, e, interval)
        return None

    def _heard(self, resp: HeartbeatResponse) -> None:
        s = self.signals
        if resp.cancel and not s.cancelled.is_set():
            log.info("job %d: the server cancelled it", self.job.id)
            s.cancelled.set()
        if resp.pause and not s.paused.is_set():
            log.info(
                "job %d: its task is paused; the running point goes on, no further point starts", self.job.id
            )
        (s.paused.set if resp.pause else s.paused.clear)()
        if resp.stop_points:
            with s.lock:
                s.stop_points.update(resp.stop_points)
            self._write_control({"stop_points": resp.stop_points})

    def _write_control(self, data: dict[str, Any]) -> None:
        try:
            self.workdir.write(CONTROL_FILE, json.dumps(data))
        except OSError as e:
            log.warning("job %d: cannot write %s: %s", self.job.id, self.workdir.rundir / CONTROL_FILE, e)


class Supervisor:
    """Watches a started command until it ends or must be stopped: its timeout, a lost lease,
    the server's cancel, the agent's hard stop, the pruner's stop (after ``kill_grace`` for the
    payload to stop by itself); checkpoints are uploaded every ``interval`` meanwhile."""

    def __init__(self, job_id: int, signals: JobSignals, hard_stop: threading.Event, kill_grace: float):
        self.job_id = job_id
        self.signals = signals
        self.hard_stop = hard_stop
        self.kill_grace = kill_grace
        self._told_to_stop: float | None = None  # when the server's pruner stopped the running point

    def supervise(
        self,
        handle: RunHandle,
        timeout_s: float | None,
        saver: CheckpointSaver | None = None,
        interval: float = 300.0,
    ) -> tuple[str, int | None]:
        """Watch a started command to its end; returns how it ended and its exit status."""
        try:
            outcome = self.watch(handle, timeout_s, saver, interval)
        finally:
            handle.finish()
        return outcome, handle.poll()

    def watch(
        self,
        handle: RunHandle,
        timeout_s: float | None,
        saver: CheckpointSaver | None = None,
        interval: float = 300.0,
    ) -> str:
        """Returns how the command ended (an :class:`Outcome`)."""
        start = time.monotonic()
        next_ckpt = start + interval
        self._told_to_stop = None
        while handle.wait(0.1) is None:
            now = time.monotonic()
            reason = self._stop_reason(now - start, timeout_s) or self._prune_reason(now, saver)
            if reason:
                log.info("job %d: stopping the payload (%s)", self.job_id, reason)
                handle.kill(self.kill_grace)
                return reason
            if saver is not None and now >= next_ckpt:
                self.save_checkpoint(saver)
                next_ckpt = time.monotonic() + interval
        return Outcome.exited

    def _stop_reason(self, elapsed: float, timeout_s: float | None) -> str | None:
        if timeout_s is not None and elapsed >= timeout_s:
            return Outcome.timeout
        if self.signals.lease_lost.is_set():
            return Outcome.lost
        if self.signals.cancelled.is_set():
            return Outcome.cancelled
        if self.hard_stop.is_set():
            return Outcome.stopped
        return None

    def _prune_reason(self, now: float, saver: CheckpointSaver | None) -> str | None:
        if self._told_to_stop is None and self.signals.pruned_now():
            self._told_to_stop = now  # the SDK's report_intermediate answers False from now on
        if self._told_to_stop is None or now - self._told_to_stop < self.kill_grace:
            return None
        # the payload did not stop by itself: its newest checkpoint first, then SIGTERM, the
        # grace period, SIGKILL
        if saver is not None:
            self.save_checkpoint(saver)
        return Outcome.pruned

    def save_checkpoint(self, saver: CheckpointSaver) -> None:
        try:
            if saver.save_if_changed():
                log.info("job %d: checkpoint %d uploaded", self.job_id, saver.uploads)
        except Exception as e:  # noqa: BLE001 - keep training; the next check tries again
            log.warning("job %d: checkpoint upload failed: %s", self.job_id, e)
