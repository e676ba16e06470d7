"""The thread that runs one leased job to its end and tells the server how it ended.

Layered like a request through httpx's client (``send`` -> auth -> redirects -> one request),
each layer one concern and calling the next:

- :class:`JobRunner` (here): the job's folders and heartbeats around it, and the one place that
  tells the server a job failed (a layer raises :class:`~.job_end.JobFailed`);
- :class:`~.evaluation_job.EvaluationJob` / :class:`~.steering_job.SteeringJob`: the job's steps;
- :mod:`.workdir`: prepare the working directory (sandbox, input files, checkpoint restore);
- :mod:`.launch`: launch the payload (launchers, environment, executors' run specs);
- :mod:`.supervision`: heartbeats, the stop/prune/cancel decisions, checkpoint uploads;
- :mod:`.results` and :mod:`.reporting`: collect the results (output file, metrics, outbox).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from phpo.schemas.jobs import CompleteRequest, FailRequest, Job, JobKind

from .evaluation_job import EvaluationJob
from .gang import GangWait
from .gpu_slots import Slot
from .job_end import JobEnded, JobFailed
from .launch import PayloadLaunch
from .reporting import JobReporter
from .runners.base import Executor, ExecutorError
from .steering_job import SteeringJob
from .supervision import Heartbeat, IntermediateReader, JobSignals, Supervisor
from .workdir import JobWorkdir

if TYPE_CHECKING:
    from .agent import Agent
    from .specs_exchange import SpecsExchange

log = logging.getLogger("phpo.agent")


class JobRunner(threading.Thread):
    """Runs one leased job to its end and tells the server how it ended."""

    def __init__(self, agent: Agent, job: Job, slot: Slot):
        super().__init__(name=f"job-{job.id}", daemon=True)
        self.agent = agent
        self.api = agent.api
        self.cfg = cfg = agent.cfg
        self.job = job
        self.slot = slot
        self.owner = cfg.payload_user.owner if cfg.payload_user else None
        self.workdir = JobWorkdir(agent.workdir, job.id, self.owner, cfg.unpack_limits)
        self.rundir, self.scratch = self.workdir.rundir, self.workdir.scratch
        self.signals = JobSignals()
        self.reader = IntermediateReader(job, self.workdir, self.signals)
        self.heartbeat = Heartbeat(self.api, job, self.workdir, self.signals, self.reader)
        self.supervisor = Supervisor(job.id, self.signals, agent.hard_stop, cfg.kill_grace)
        self.gang_wait = GangWait(self.api, cfg.name, cfg.retry_seconds, self.signals, agent.hard_stop)
        self.reporter = JobReporter(
            self.api,
            job,
            self.workdir,
            agent.outbox,
            self.signals.lease_lost,
            cfg.retry_seconds,
            cfg.max_log_bytes,
        )
        self.launch = PayloadLaunch(job, cfg, slot, self.workdir)
        self.handed_over = False
        self.specs_exchange: SpecsExchange | None = None  # the task's data specs (training files)

    @property
    def next_job(self) -> Job | None:
        """The job ``complete`` leased for this slot."""
        return self.reporter.next_job

    def run(self) -> None:
        try:
            self.workdir.create()
            self.heartbeat.start()
            self._run_job()
            self.hand_over()
        except Exception as e:
            log.exception("job %d: unexpected error", self.job.id)
            self.finish(
                "fail",
                FailRequest(error=f"agent {self.cfg.name}: unexpected error: {e!r}"[:99_000], retry=True),
            )
        finally:
            self.signals.done.set()
            self.heartbeat.join(timeout=5)
            if not self.cfg.keep_workdirs:
                self.workdir.remove()
            self.agent.job_finished(self)

    def _run_job(self) -> None:
        steps = SteeringJob(self) if self.job.kind == JobKind.steering else EvaluationJob(self)
        try:
            steps.run()
        except JobFailed as e:
            self.finish("fail", FailRequest(error=e.error, retry=e.retry))
        except JobEnded:
            pass

    def hand_over(self) -> None:
        """Start the job ``complete`` leased for this slot (once); this thread may go on with
        its uploads meanwhile."""
        self.signals.done.set()  # the job has ended on the server: no more heartbeats
        if self.next_job is not None and not self.handed_over:
            self.handed_over = True
            self.agent.start_job(self.next_job, self.slot)

    def finish(self, kind: str, body: CompleteRequest | FailRequest) -> None:
        """End the job on the server; keep the call in the outbox when the server is away."""
        self.reporter.finish(kind, body)

    def executor_for(self, image: str | None, evaluation: bool = False) -> Executor:
        """The agent's executor for this job; raises :class:`JobFailed` when it has none."""
        try:
            return self.agent.executors.executor_for(image, evaluation)
        except ExecutorError as e:
            log.error("job %d: %s", self.job.id, e)
            raise JobFailed(str(e), retry=e.retryable) from e
