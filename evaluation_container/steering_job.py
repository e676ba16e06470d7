"""A steering job, one iteration as iDDS runs it: ``%IN`` (``idds_input.json``) written into a
fresh working directory, the command run in one of its three forms (see
:mod:`.steering_command`), ``%OUT`` (``output.json``) read back from it."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from phpo.schemas.jobs import CompleteRequest, SteeringSettings
from phpo.schemas.payload import ENV_WORKDIR
from phpo.schemas.upstream import STEERING_IN, STEERING_OUT, steering_form

from . import steering_command
from .job_end import JobEnded, JobFailed
from .results import Outcome, read_steering_output, with_stderr
from .runners.base import Executor, ExecutorError, RunHandle, RunSpec

if TYPE_CHECKING:
    from .job_runner import JobRunner

log = logging.getLogger("phpo.agent")

ERROR_MAX_CHARS = 99_000


class SteeringJob:
    def __init__(self, runner: JobRunner):
        self.runner = runner

    def run(self) -> None:
        st = self.runner.job.steering
        if st is None:
            raise JobFailed("steering job without steering settings", retry=False)
        executor = self._executor(st)
        spec = self._prepare(st)
        handle = self._launch(executor, spec)
        outcome, rc = self.runner.supervisor.supervise(handle, st.timeout_s)
        self._collect(st, outcome, rc, spec)

    def _executor(self, st: SteeringSettings) -> Executor:
        docker_style = steering_form(st.exec, st.container) != "shell"
        return self.runner.executor_for(
            st.container or ("(docker-style steeringExec)" if docker_style else None)
        )

    def _prepare(self, st: SteeringSettings) -> RunSpec:
        r = self.runner
        r.workdir.unpack_sandbox(r.agent.sandboxes, st.sandbox_artifact, r.cfg.name)
        r.workdir.write(STEERING_IN, json.dumps(st.input))
        r.workdir.unlink(STEERING_OUT)
        spec = r.launch.spec(
            "",
            {**r.launch.base_env(), ENV_WORKDIR: str(r.rundir)},
            "steering.stdout.txt",
            "steering.stderr.txt",
        )
        try:
            steering_command.prepare(spec, st.exec, st.container, st.num_points, st.max_points)
        except ExecutorError as e:
            raise JobFailed(f"cannot run the steering command: {e}", retry=e.retryable) from e
        return spec

    def _launch(self, executor: Executor, spec: RunSpec) -> RunHandle:
        r = self.runner
        log.info("job %d: steering for task %d started: %s", r.job.id, r.job.task_id, spec.command)
        try:
            return executor.start(spec)
        except ExecutorError as e:
            raise JobFailed(f"cannot start the steering command: {e}", retry=e.retryable) from e

    def _collect(self, st: SteeringSettings, outcome: str, rc: int | None, spec: RunSpec) -> None:
        r = self.runner
        if outcome == Outcome.lost:
            raise JobEnded()
        if outcome != Outcome.exited:
            what = {
                Outcome.timeout: f"timed out after {st.timeout_s:g} s",
                Outcome.cancelled: "was cancelled by the server",
                Outcome.stopped: f"was stopped: agent {r.cfg.name} is shutting down",
            }[outcome]
            raise JobFailed(
                with_stderr(f"the steering command {what}", spec.stderr_path)[:ERROR_MAX_CHARS], retry=True
            )
        points, error = read_steering_output(r.rundir, rc)
        if error is not None:
            raise JobFailed(with_stderr(error, spec.stderr_path)[:ERROR_MAX_CHARS], retry=True)
        if rc:
            log.warning("job %d: steering exited %s but wrote a valid output; using it", r.job.id, rc)
        r.finish("complete", CompleteRequest(steering_output=points, next=r.agent.next_request(r.slot)))
