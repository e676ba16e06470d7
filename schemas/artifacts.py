"""Artifacts: files kept in the artifact store; the database keeps metadata and checksums."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel


class ArtifactKind(StrEnum):
    sandbox = "sandbox"
    checkpoint = "checkpoint"
    log = "log"
    meta = "meta"
    metrics = "metrics"
    other = "other"


class Artifact(BaseModel):
    id: int
    kind: ArtifactKind
    name: str
    size: int
    sha256: str
    task_id: int | None = None
    point_id: int | None = None
    job_id: int | None = None
    created_at: datetime
