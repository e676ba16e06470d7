"""Artifacts: files kept in the artifact store; the database keeps metadata and checksums."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel

MAX_ARTIFACT_NAME = 255
"""Longest artifact name (a file name on most file systems)."""


def check_artifact_name(name: str) -> str:
    """An artifact name must be one that can be stored and served back as a download's file name:
    1 to 255 characters, valid Unicode, no control characters (NUL, CR/LF, ...). Raises
    ``ValueError`` naming the first offending character."""
    if not name:
        raise ValueError("the name is empty; give a file name such as 'sandbox.tar.gz'")
    if len(name) > MAX_ARTIFACT_NAME:
        raise ValueError(f"the name has {len(name)} characters; at most {MAX_ARTIFACT_NAME} are allowed")
    for i, ch in enumerate(name):
        code = ord(ch)
        if code < 0x20 or 0x7F <= code <= 0x9F or 0xD800 <= code <= 0xDFFF:
            raise ValueError(
                f"the name has the control character U+{code:04X} at position {i}; "
                "use printable characters only"
            )
    return name


class ArtifactKind(StrEnum):
    sandbox = "sandbox"
    checkpoint = "checkpoint"
    log = "log"
    meta = "meta"
    metrics = "metrics"
    specs = "specs"  # a task's phpo.data specs, shared by its jobs (phpo.schemas.data_specs)
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
