"""Request/response bodies of the REST API and its route table.

All routes live under ``/api/v1`` and need ``Authorization: Bearer <token>`` (except health).
The web view is served at ``/ui/`` (static files; it calls these routes with the user's token).
Errors are :class:`ErrorBody` JSON with a machine-readable ``code``.

=======  ======================================  ===========  ==============================
method   path                                    role         body -> answer
=======  ======================================  ===========  ==============================
GET      /health                                 (none)       -> Health
GET      /me                                     any          -> Me
POST     /tokens                                 admin        TokenCreate -> TokenCreated (201)
GET      /tokens                                 admin        -> list[TokenInfo]
POST     /tokens/{id}/revoke                     admin        -> TokenInfo (refused from the next request)
PUT      /sandboxes                              user         raw bytes (tar.gz) -> Artifact
POST     /tasks                                  user         TaskSpec -> Task (201)
GET      /tasks?state=&name=&limit=&offset=      user         -> Page[Task]
GET      /tasks/{id}                             user         -> Task
POST     /tasks/{id}/cancel|pause|resume         user         -> Task
GET      /tasks/{id}/segments?limit&offset&sort  user         -> Page[Segment]
GET      /tasks/{id}/points?segment=&state=&limit&offset&sort   -> Page[Point]
GET      /tasks/{id}/best?segment=               user         -> list[BestPoint] (one per segment)
GET      /tasks/{id}/models                      user         -> list[RegisteredModel] (one per segment)
GET      /tasks/{id}/iterations?limit&offset     user         -> Page[SteeringIteration]
GET      /tasks/{id}/artifacts?kind=&point_id=   user         -> Page[Artifact]
GET      /tasks/{id}/plots/{kind}?segment=       user         -> plotly figure JSON (409: too few points)
GET      /tasks/{id}/runs                        user         -> the MLflow run (and UI link) of each point
GET      /artifacts/{id}                         user|agent   -> bytes (streamed; agents: their jobs' only)
POST     /jobs/acquire                           agent        AcquireRequest -> Job | 204
POST     /jobs/{id}/heartbeat                    agent        HeartbeatRequest -> HeartbeatResponse
POST     /jobs/{id}/points/{point_id}/result     agent        PointResult -> JobAck
POST     /jobs/{id}/complete                     agent        CompleteRequest -> JobAck
POST     /jobs/{id}/fail                         agent        FailRequest -> JobAck
PUT      /jobs/{id}/artifacts/{kind}?name=&point_id=  agent   raw bytes -> Artifact
POST     /workflows                              user         WorkflowSubmit -> Workflow (201)
GET      /workflows?state=&name=&limit=&offset=  user         -> Page[Workflow] (top-level, no node tree)
GET      /workflows/{id}                         user         -> Workflow (with its node tree)
POST     /workflows/{id}/cancel                  user         -> Workflow
=======  ======================================  ===========  ==============================

Result calls are idempotent: a result sent twice (an agent resending after a lost answer)
gets ``duplicate: true`` and changes nothing. A call on a job whose lease has been lost
answers 409 ``lease_lost``.

``acquire`` is a long poll when ``wait_s`` > 0: with nothing ready the server holds the call
until a job is ready (then answers at once) or ``wait_s`` has passed (then 204). ``complete``
with ``next`` (an AcquireRequest) also leases the agent's next job, returned as
``JobAck.next_job``: the agent refills a slot in the round trip that reports its last result.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

T = TypeVar("T")

API_PREFIX = "/api/v1"

MAX_INT64 = 2**63 - 1
"""Ids, offsets and counters are 64-bit signed integers in the database: a larger value in a path,
a query or a body is a 422, not a database overflow."""
MAX_INT32 = 2**31 - 1
"""Segment indexes and serials are 32-bit integers in the database."""
MAX_PAGE = 1000
"""The largest ``limit`` of one page of a list route."""


class Role(StrEnum):
    user = "user"
    agent = "agent"
    admin = "admin"


class ErrorBody(BaseModel):
    """Every error answer. ``field`` names the offending input where there is one."""

    code: str = Field(description="machine-readable, e.g. validation_error, not_found, lease_lost")
    message: str = Field(description="a sentence a person can act on")
    field: str | None = None
    details: list[dict] | None = None


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class Health(BaseModel):
    status: str = Field(default="ok", description="ok, or failing (HTTP 503) with the problems named")
    version: str
    database: str = Field(description="sqlite or postgresql")
    problems: list[str] = Field(
        default_factory=list,
        description="what is wrong with the database or the artifact store, each naming the path",
    )
    gc_frozen_objects: int = Field(
        default=0,
        description="objects the answering server process keeps out of Python's full garbage "
        "collections (frozen once it started, so those pause it for milliseconds, not ~50 ms)",
    )


class Me(BaseModel):
    name: str
    role: Role
    sites: list[str] | None = Field(
        default=None, description="agent tokens: the sites they may take jobs for (absent: any site)"
    )


SITE_NAME = r"^[^,\s]([^,]{0,198}[^,\s])?$"  # what an agent's --site may be, without commas


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    role: Role = Role.user
    sites: list[Annotated[str, Field(pattern=SITE_NAME)]] | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="agent tokens only: the sites the token may take jobs for (default: any site)",
    )

    @model_validator(mode="after")
    def _sites_for_agents(self) -> TokenCreate:
        if self.sites is not None and self.role != Role.agent:
            raise ValueError(f"sites: only agent tokens are scoped to sites, not {self.role.value} tokens")
        return self


class TokenCreated(BaseModel):
    id: int
    name: str
    role: Role
    sites: list[str] | None = None
    token: str = Field(description="shown only this once; the server keeps only its hash")


class TokenInfo(BaseModel):
    """A token as an admin sees it (never the token itself)."""

    id: int
    name: str
    role: Role
    sites: list[str] | None = None
    created_at: datetime
    revoked: bool


class SteeringIteration(BaseModel):
    """One steering call, recorded so users can see why a task waits."""

    id: int
    task_id: int
    segment_id: int | None = None
    optimizer: str
    requested: int
    produced: int = 0
    started_at: datetime
    duration_s: float | None = None
    error: str | None = None
