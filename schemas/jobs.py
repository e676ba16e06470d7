"""Jobs: what an agent leases, runs and reports (docs/payloads.md)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .points import Loss, check_loss
from .states import JobState


MAX_ACQUIRE_WAIT_S = 20.0  # below the agent client's 30 s request timeout


class JobKind(StrEnum):
    evaluation = "evaluation"
    steering = "steering"


class GPUInfo(BaseModel):
    index: int
    vendor: str = "nvidia"
    model: str = ""
    memory_mb: int = 0


class AgentResources(BaseModel):
    """What an agent advertises on ``acquire`` and the server matches against
    ``--site`` and ``--architecture`` (e.g. ``#x86_64-*-avx2&nvidia:vram>=40960``)."""

    model_config = ConfigDict(extra="ignore")
    arch: str = "x86_64"
    cpu_flags: list[str] = Field(default_factory=list)
    cpus: int = 1
    memory_mb: int = 0
    gpus: list[GPUInfo] = Field(default_factory=list, description="GPUs free for this job")
    container_runtimes: list[str] = Field(default_factory=list, description="e.g. docker, podman")


class AcquireRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    agent: str = Field(min_length=1, max_length=200, description="agent name, unique per process")
    site: str = Field(min_length=1, max_length=200)
    resources: AgentResources = Field(default_factory=AgentResources)
    kinds: list[JobKind] = Field(default_factory=lambda: [JobKind.evaluation, JobKind.steering])
    wait_s: float = Field(
        default=0.0,
        ge=0.0,
        le=MAX_ACQUIRE_WAIT_S,
        description="long poll: when no job is ready, wait up to this many seconds for one (0: answer at once)",
    )
    rendezvous_endpoint: str | None = Field(
        default=None,
        max_length=300,
        pattern=r"^[^\s:/]+:[0-9]{1,5}$",
        description="HOST:PORT where this agent would host the rendezvous of a point trained by several agents "
        "(nNodesPerPoint > 1), if it leads one; an agent that sends none is not given such points",
    )


class JobPoint(BaseModel):
    point_id: int
    serial: int
    params: dict[str, Any]
    attempt: int = Field(description="1 for the first try")
    checkpoint_artifact: int | None = Field(default=None, description="latest checkpoint to resume from")
    mlflow_run_id: str | None = Field(
        default=None,
        description="MLflow run of this point, if it exists yet (the payload's PHPO_MLFLOW_RUN_ID)",
    )


class EvaluationSettings(BaseModel):
    """The part of the task spec the agent needs to run an evaluation."""

    container: str | None = None
    exec: str
    input: str = "input.json"
    training_data: str = "input_ds.json"
    output: str = "output.json"
    meta: str | None = None
    metrics: str | None = None
    checkpoint_to_save: list[str] = Field(default_factory=list)
    checkpoint_to_load: str | None = None
    checkpoint_interval_s: float = 300.0
    timeout_s: float | None = None
    training_files: list[str] = Field(default_factory=list)
    sandbox_artifact: int | None = None
    processes: int = Field(default=1, ge=1, description="ranks per point (nProcessesPerPoint)")
    launcher: str = Field(default="none", description="none | torchrun | horovodrun | dask")
    intermediate_metric: str | None = Field(
        default=None, description="the payload's own MLflow metric read as its intermediate values"
    )


class SteeringSettings(BaseModel):
    """A steering iteration (upstream's steering command, docs/compatibility.md): write ``input`` to %IN, run ``exec``, read %OUT."""

    container: str | None = None
    exec: str
    input: dict[str, Any] = Field(description="the %IN file's content")
    num_points: int
    max_points: int
    sandbox_artifact: int | None = None
    timeout_s: float = 600.0


class GangInfo(BaseModel):
    """A point trained by several agents together (``nNodesPerPoint``): this job's place in its gang."""

    size_min: int = Field(ge=1, description="agents the point needs before it starts (MIN)")
    size_max: int = Field(ge=1, description="agents it may grow to (MAX; equal to MIN unless elastic)")
    node_rank: int = Field(
        ge=0, description="0: this agent hosts the rendezvous and reports the point's result"
    )
    leader_job_id: int = Field(description="the job of node rank 0 (torchrun's --rdzv-id is job<ID>)")
    endpoint: str = Field(description="HOST:PORT of the rendezvous (node rank 0's agent)")
    formed: bool = Field(default=False, description="MIN agents have joined: start the payload")
    members: int = Field(default=1, description="agents in the gang now")
    message: str | None = Field(
        default=None, description="why the gang ended before it formed (its jobs are cancelled; stop waiting)"
    )


class Job(BaseModel):
    """What ``acquire`` hands an agent."""

    id: int
    kind: JobKind
    task_id: int
    segment_id: int = 0
    segment: str = ""
    state: JobState = JobState.running
    lease_seconds: float
    lease_expires_at: datetime
    points: list[JobPoint] = Field(default_factory=list)
    evaluation: EvaluationSettings | None = None
    steering: SteeringSettings | None = None
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="set when the server bridges to MLflow: the agent then ships the payload's "
        "./mlruns store, which the server imports into the point's run",
    )
    gang: GangInfo | None = Field(default=None, description="set when the point is trained by several agents")


class IntermediateReport(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)
    point_id: int
    step: int
    value: float | None = Field(
        description="null where the payload reported NaN or Infinity (JSON has neither)"
    )


class HeartbeatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    intermediate: list[IntermediateReport] = Field(default_factory=list)
    message: str | None = None


class HeartbeatResponse(BaseModel):
    lease_expires_at: datetime
    cancel: bool = Field(
        default=False, description="stop the job now: its task has ended (cancelled, failed, finished)"
    )
    pause: bool = Field(
        default=False,
        description="its task is paused: finish the running point, start no "
        "further point of this job (they go back to ready, no attempt spent)",
    )
    stop_points: list[int] = Field(default_factory=list, description="points to stop early (pruning)")
    gang: GangInfo | None = Field(
        default=None, description="a point of several agents: whether its gang formed"
    )


class PointResult(BaseModel):
    """One point's outcome, from the payload's output file plus what the agent saw."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    point_id: int
    status: int = 0
    loss: Loss | None = None
    metrics: dict[str, Any] | None = None
    message: str | None = Field(default=None, max_length=100_000)

    @field_validator("loss", mode="before")
    @classmethod
    def _loss(cls, v: Any) -> Any:
        return check_loss(v)


class CompleteRequest(BaseModel):
    """Ends a job. Results not reported earlier through ``/points/{id}/result`` go here.
    Points of the job with no result at all are returned to ``ready`` (attempt spent)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    results: list[PointResult] = Field(default_factory=list)
    steering_output: list[Any] | None = Field(default=None, description="%OUT of a steering job")
    message: str | None = Field(default=None, max_length=100_000)
    next: AcquireRequest | None = Field(
        default=None,
        description="lease the agent's next job in the same call (the slot is refilled without another round trip)",
    )


class FailRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    error: str = Field(max_length=100_000)
    retry: bool = Field(default=True, description="false: no point of this job should be retried")


class JobAck(BaseModel):
    job_id: int
    state: JobState
    duplicate: bool = Field(default=False, description="this result had already been received")
    next_job: Job | None = Field(default=None, description="the job leased for CompleteRequest.next, if any")
