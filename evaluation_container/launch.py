"""Launch a job's payload: the launcher's command line (torchrun, horovodrun, dask, plain),
the environment the payload contract names, the executor's :class:`~.runners.base.RunSpec`
with the logs it writes, and the rendezvous of a point trained by several agents."""

from __future__ import annotations

from typing import TYPE_CHECKING

from phpo.schemas.jobs import EvaluationSettings, GangInfo, Job, JobPoint
from phpo.schemas.payload import (
    CONTROL_FILE,
    ENV_AGENT,
    ENV_ATTEMPT,
    ENV_CKPT_LOAD,
    ENV_CKPT_SAVE,
    ENV_CONTROL,
    ENV_GPUS,
    ENV_INPUT,
    ENV_INTERMEDIATE,
    ENV_JOB_ID,
    ENV_META,
    ENV_METRICS,
    ENV_OUTPUT,
    ENV_POINT_ID,
    ENV_POINT_SERIAL,
    ENV_RESUMED,
    ENV_SEGMENT,
    ENV_SEGMENT_ID,
    ENV_SITE,
    ENV_TASK_ID,
    ENV_TRAINING,
    ENV_WORKDIR,
    INTERMEDIATE_FILE,
)

from . import mlflow_local
from .gpu_slots import Slot
from .job_end import JobFailed
from .launchers import Rendezvous, launch_command
from .runners.base import RunSpec
from .workdir import JobWorkdir

if TYPE_CHECKING:
    from .agent import AgentConfig


def job_env(
    *, job_id: int, task_id: int, segment: str, segment_id: int, site: str, agent: str
) -> dict[str, str]:
    """The job part of a payload's environment (steering and evaluation payloads, run-local's
    too): which job, task, segment, site and agent, and where the SDK's exchange files are."""
    return {
        ENV_JOB_ID: str(job_id),
        ENV_TASK_ID: str(task_id),
        ENV_SEGMENT: segment,
        ENV_SEGMENT_ID: str(segment_id),
        ENV_SITE: site,
        ENV_AGENT: agent,
        ENV_INTERMEDIATE: INTERMEDIATE_FILE,
        ENV_CONTROL: CONTROL_FILE,
    }


def point_env(
    *,
    workdir: str,
    input_file: str,
    output_file: str,
    point_id: int,
    serial: int,
    attempt: int,
    resumed: bool,
    checkpoint_to_save: str,
    training_data: str | None,
    checkpoint_to_load: str | None,
    meta: str | None,
    metrics: str | None,
) -> dict[str, str]:
    """The point part of an evaluation payload's environment (the agent's and run-local's); the
    optional files are named only when the task has them."""
    env = {
        ENV_WORKDIR: workdir,
        ENV_INPUT: input_file,
        ENV_OUTPUT: output_file,
        ENV_POINT_ID: str(point_id),
        ENV_POINT_SERIAL: str(serial),
        ENV_ATTEMPT: str(attempt),
        ENV_RESUMED: "1" if resumed else "0",
        ENV_CKPT_SAVE: checkpoint_to_save,
    }
    for key, value in (
        (ENV_TRAINING, training_data),
        (ENV_CKPT_LOAD, checkpoint_to_load),
        (ENV_META, meta),
        (ENV_METRICS, metrics),
    ):
        if value:
            env[key] = value
    return env


def rendezvous(gang: GangInfo | None, local_addr: str) -> Rendezvous | None:
    """torchrun's rendezvous for this agent's node of the point (None: one agent per point)."""
    if gang is None:
        return None
    fixed = gang.size_min == gang.size_max
    return Rendezvous(
        gang.endpoint,
        (gang.size_min, gang.size_max),
        f"job{gang.leader_job_id}",
        gang.node_rank == 0,
        local_addr=local_addr,
        max_restarts=0 if fixed else 3,
        node_rank=gang.node_rank if fixed else None,
    )


class PayloadLaunch:
    """What one job's payload is started with, on its slot's GPUs, in its run directory."""

    def __init__(self, job: Job, cfg: AgentConfig, slot: Slot, workdir: JobWorkdir):
        self.job = job
        self.cfg = cfg
        self.slot = slot
        self.workdir = workdir

    def command(self, ev: EvaluationSettings, gang: GangInfo | None) -> str:
        """``evaluationExec`` under the task's launcher; raises :class:`JobFailed`."""
        try:
            return launch_command(
                ev.launcher,
                ev.exec,
                ev.processes,
                self.slot.gpu_indices,
                container=bool(ev.container),
                rendezvous=rendezvous(gang, self.cfg.rendezvous_host),
            )
        except FileNotFoundError as e:  # another agent may have the launcher's tooling
            raise JobFailed(f"{e} (agent {self.cfg.name})", retry=True) from e
        except ValueError as e:
            raise JobFailed(f"{e} (agent {self.cfg.name})", retry=False) from e

    def base_env(self) -> dict[str, str]:
        env = job_env(
            job_id=self.job.id,
            task_id=self.job.task_id,
            segment=self.job.segment,
            segment_id=self.job.segment_id,
            site=self.cfg.site,
            agent=self.cfg.name,
        )
        if self.slot.gpu_indices is not None:
            env[ENV_GPUS] = ",".join(str(i) for i in self.slot.gpu_indices)
        return env

    def point_env(
        self,
        ev: EvaluationSettings,
        point: JobPoint,
        seen_workdir: str,
        resumed: bool,
        specs_env: dict[str, str] | None,
    ) -> dict[str, str]:
        """The environment of ``point``'s payload (``seen_workdir``: the run directory as the
        command sees it)."""
        env = self.base_env()
        env.update(
            point_env(
                workdir=seen_workdir,
                input_file=ev.input,
                output_file=ev.output,
                point_id=point.point_id,
                serial=point.serial,
                attempt=point.attempt,
                resumed=resumed,
                checkpoint_to_save=",".join(ev.checkpoint_to_save),
                training_data=ev.training_data if ev.training_files else None,
                checkpoint_to_load=ev.checkpoint_to_load,
                meta=ev.meta,
                metrics=ev.metrics,
            )
        )
        if specs_env is not None:
            env.update(specs_env)
        # the payload's own MLflow calls go to ./mlruns; the server imports it into the point's run
        env.update(
            mlflow_local.payload_env(seen_workdir, bool(self.job.mlflow_tracking_uri), point.mlflow_run_id)
        )
        return env

    def point_spec(
        self, ev: EvaluationSettings, point: JobPoint, command: str, env: dict[str, str]
    ) -> RunSpec:
        tag = f"p{point.point_id}-a{point.attempt}"
        return self.spec(command, env, f"{tag}.stdout.txt", f"{tag}.stderr.txt", image=ev.container)

    def spec(
        self, command: str, env: dict[str, str], stdout: str, stderr: str, image: str | None = None
    ) -> RunSpec:
        """A command in the run directory, its output streams to ``logs/``."""
        return RunSpec(
            command=command,
            workdir=self.workdir.rundir,
            stdout_path=self.workdir.logdir / stdout,
            stderr_path=self.workdir.logdir / stderr,
            env=env,
            image=image,
            gpus=self.slot.gpu_indices,
            network=self.cfg.container_network,
            user=self.cfg.payload_user,
        )
