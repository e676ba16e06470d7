"""An evaluation job: its points run one after the other in one run directory, each through
the same layers (prepare -> launch -> supervise -> collect), each result reported as soon as it
is known; the last goes with ``complete``, which also leases the slot's next job."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from phpo.schemas.artifacts import ArtifactKind
from phpo.schemas.jobs import CompleteRequest, EvaluationSettings, FailRequest, JobPoint, PointResult
from phpo.schemas.payload import CONTROL_FILE

from . import mlflow_local
from .checkpoints import CheckpointSaver
from .job_end import JobEnded, JobFailed
from .results import Outcome, read_output, with_stderr
from .runners.base import Executor, ExecutorError, RunHandle, RunSpec
from .specs_exchange import SpecsExchange

if TYPE_CHECKING:
    from .job_runner import JobRunner

log = logging.getLogger("phpo.agent")


class _AttemptFailed(Exception):
    """A point's attempt failed before its payload ran (its checkpoint was not restored, its
    payload did not start): ``result`` says why."""

    def __init__(self, result: PointResult, with_complete: bool):
        super().__init__(result.message)
        self.result = result
        self.with_complete = with_complete  # keep it for ``complete`` rather than report it now


class EvaluationJob:
    def __init__(self, runner: JobRunner):
        self.runner = runner
        self.ev: EvaluationSettings = runner.job.evaluation  # type: ignore[assignment]
        self.unacked: list[PointResult] = []  # results the server has not acknowledged yet
        self.member = False  # node rank > 0 of a point's gang: reports nothing, node rank 0 does
        self.saver: CheckpointSaver | None = None
        self._ckpt_point: int | None = None  # the point the saver's checkpoints belong to

    def run(self) -> None:
        self._prepare_job()
        stop_reason = self._run_points()
        self.runner.signals.set_point(None)
        self._close(stop_reason)

    # --- the job: prepared once, closed once --------------------------------------------------

    def _prepare_job(self) -> None:
        r = self.runner
        if self.ev is None:
            raise JobFailed("evaluation job without evaluation settings", retry=False)
        self.executor: Executor = r.executor_for(self.ev.container, evaluation=True)
        if r.job.gang is not None:
            r.job = r.gang_wait.wait(r.job)
        self.member = r.job.gang is not None and r.job.gang.node_rank > 0
        r.workdir.unpack_sandbox(r.agent.sandboxes, self.ev.sandbox_artifact, r.cfg.name)
        if self.ev.training_files:
            r.workdir.write(self.ev.training_data, json.dumps(self.ev.training_files))
        self.command = r.launch.command(self.ev, r.job.gang)
        self.seen_workdir = self.executor.workdir_seen_by_command(
            RunSpec(command="", workdir=r.rundir, stdout_path=Path(), stderr_path=Path())
        )
        r.specs_exchange = SpecsExchange.start(r, self.executor, self.seen_workdir)
        self.interval = max(0.5, self.ev.checkpoint_interval_s)
        self.saver = self._checkpoint_saver()

    def _checkpoint_saver(self) -> CheckpointSaver | None:
        if not self.ev.checkpoint_to_save or self.member:
            return None
        return CheckpointSaver(
            self.runner.rundir,
            self.ev.checkpoint_to_save,
            max_bytes=self.runner.cfg.max_checkpoint_bytes,
            scratch_dir=self.runner.scratch,
            upload=self._upload_checkpoint,
        )

    def _upload_checkpoint(self, path: Path) -> None:
        r, pid = self.runner, self._ckpt_point
        r.api.upload_artifact(
            r.job.id,
            ArtifactKind.checkpoint,
            path,
            f"checkpoint-p{pid}.tar.gz",
            point_id=pid,
            retry_seconds=min(r.cfg.retry_seconds, 60),
        )

    def _close(self, stop_reason: str | None) -> None:
        r = self.runner
        if stop_reason == Outcome.lost:
            log.warning("job %d: lease lost; its points go back to the server's queue", r.job.id)
            if self.unacked:
                # the server may still take results it has not seen (it answers duplicate/409)
                r.finish("complete", CompleteRequest(results=self.unacked))
            return
        if stop_reason == Outcome.cancelled or (
            stop_reason == Outcome.stopped and r.agent.hard_stop.is_set()
        ):
            why = (
                "cancelled by the server"
                if stop_reason == Outcome.cancelled
                else f"agent {r.cfg.name} is shutting down"
            )
            if self.unacked:
                r.finish("complete", CompleteRequest(results=self.unacked, message=why))
            else:
                r.finish("fail", FailRequest(error=why, retry=True))
            return
        r.finish("complete", CompleteRequest(results=self.unacked, next=r.agent.next_request(r.slot)))

    # --- the points ---------------------------------------------------------------------------

    def _run_points(self) -> str | None:
        """Run the points in turn; returns why it stopped early (an :class:`Outcome`) or None."""
        points = self.runner.job.points
        for i, point in enumerate(points):
            if i > 0 and self.runner.signals.stop_before_next_point(self.runner.agent.stopping.is_set()):
                return Outcome.stopped
            reason = self._run_point(point, first=i == 0, last=i == len(points) - 1)
            if reason:
                return reason
        return None

    def _run_point(self, point: JobPoint, first: bool, last: bool) -> str | None:
        self._ckpt_point = point.point_id
        self.runner.signals.set_point(point)
        try:
            resumed = self._prepare_point(point, first, last)
            handle, spec = self._launch(point, resumed)
        except _AttemptFailed as e:
            if e.with_complete or not self.runner.reporter.report_point(e.result):
                self.unacked.append(e.result)
            return None
        outcome, rc = self.runner.supervisor.supervise(handle, self.ev.timeout_s, self.saver, self.interval)
        return self._collect(point, last, outcome, rc, spec)

    def _prepare_point(self, point: JobPoint, first: bool, last: bool) -> bool:
        """A fresh start for ``point`` in the shared run directory; True when it resumes from its
        checkpoint."""
        self._clear_run_dir(first)
        resumed = False
        r = self.runner
        g = r.job.gang
        if (
            point.checkpoint_artifact is not None
            and self.member
            and g is not None
            and g.size_min < g.size_max
        ):
            # an elastic point: every (re)start takes its state from global rank 0, on node rank
            # 0's agent; the checkpoint this member was leased with may be replaced by then
            log.info(
                "job %d: node rank %d of an elastic point does not restore checkpoint artifact %d "
                "(its ranks take rank 0's state)",
                r.job.id,
                g.node_rank,
                point.checkpoint_artifact,
            )
        elif point.checkpoint_artifact is not None:
            why = r.workdir.restore_checkpoint(r.api, point, self.ev.checkpoint_to_load, r.cfg.name)
            if why is not None:
                raise _AttemptFailed(
                    PointResult(point_id=point.point_id, status=1, message=why), with_complete=last
                )
            resumed = True
        if self.saver is not None:
            self.saver.reset(self.saver.fingerprint() if resumed else None)
        self.runner.workdir.write(self.ev.input, json.dumps(point.params))
        return resumed

    def _clear_run_dir(self, first: bool) -> None:
        """What the previous point left that the next one must not take for its own."""
        wd = self.runner.workdir
        wd.unlink(self.ev.output)
        mlflow_local.clear(wd.rundir)
        self.runner.reader.forget_metrics()
        if self.saver is not None and not first:
            self.saver.remove_files()
        if self.ev.checkpoint_to_load:
            wd.unlink(self.ev.checkpoint_to_load)
        wd.unlink(CONTROL_FILE)

    def _launch(self, point: JobPoint, resumed: bool) -> tuple[RunHandle, RunSpec]:
        r = self.runner
        env = r.launch.point_env(
            self.ev,
            point,
            self.seen_workdir,
            resumed,
            r.specs_exchange.env if r.specs_exchange is not None else None,
        )
        spec = r.launch.point_spec(self.ev, point, self.command, env)
        log.info(
            "job %d: point %d (attempt %d) started: %s", r.job.id, point.point_id, point.attempt, self.command
        )
        try:
            return self.executor.start(spec), spec
        except ExecutorError as e:
            log.error("job %d: %s", r.job.id, e)
            if not e.retryable:
                raise JobFailed(str(e), retry=False) from e
            raise _AttemptFailed(
                PointResult(point_id=point.point_id, status=1, message=f"cannot start the payload: {e}"),
                with_complete=False,
            ) from e

    def _collect(
        self, point: JobPoint, last: bool, outcome: str, rc: int | None, spec: RunSpec
    ) -> str | None:
        """Read, report and upload what the point's payload left; returns why the job stops
        early (an :class:`Outcome`) or None."""
        r = self.runner
        if outcome == Outcome.lost:
            return outcome
        if outcome in (Outcome.cancelled, Outcome.stopped):
            if self.saver is not None:
                r.supervisor.save_checkpoint(self.saver)
            self._upload_files(point, spec)
            return outcome
        if self.member:
            self._finish_member(outcome, rc, spec.stderr_path)
            self._upload_files(point, spec)
            raise JobEnded()
        result = self._read_result(point, outcome, rc, spec)
        if last:
            # the last result goes with complete (one round trip less per job); its files
            # first, so a task that has ended has all its logs
            self.unacked.append(result)
            self._upload_files(point, spec)
            return None
        if not r.reporter.report_point(result):
            self.unacked.append(result)
        self._upload_files(point, spec)
        return Outcome.lost if r.signals.lease_lost.is_set() else None

    def _read_result(self, point: JobPoint, outcome: str, rc: int | None, spec: RunSpec) -> PointResult:
        r = self.runner
        r.heartbeat.flush(retry_seconds=min(r.cfg.retry_seconds, 10))
        result = read_output(
            r.rundir / self.ev.output,
            outcome,
            rc,
            spec.stderr_path,
            point.point_id,
            self.ev.timeout_s,
            root=r.rundir,
        )
        log.info(
            "job %d: point %d ended (%s, exit %s, status %d)",
            r.job.id,
            point.point_id,
            outcome,
            rc,
            result.status,
        )
        if result.status != 0 and self.saver is not None:
            r.supervisor.save_checkpoint(self.saver)
        return result

    def _upload_files(self, point: JobPoint, spec: RunSpec) -> None:
        self.runner.reporter.upload_point_files(
            point, spec.stdout_path, spec.stderr_path, self.runner.specs_exchange
        )

    def _finish_member(self, outcome: str, rc: int | None, stderr: Path) -> None:
        """Node rank > 0 closes its own job: complete (no result) when its ranks exited 0, else fail
        (which fails the point's attempt on the server)."""
        r = self.runner
        if outcome == Outcome.exited and rc == 0:
            r.finish("complete", CompleteRequest(next=r.agent.next_request(r.slot)))
            return
        g = r.job.gang
        r.finish(
            "fail",
            FailRequest(
                error=with_stderr(
                    f"node {g.node_rank if g else '?'} of the point's gang on agent {r.cfg.name}: the payload "
                    f"{outcome} (exit {rc})",
                    stderr,
                ),
                retry=True,
            ),
        )
