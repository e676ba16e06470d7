"""Path and query parameters with their bounds, so that the OpenAPI spec declares them and a value
the database cannot hold (ids and offsets are 64-bit) is a 422 naming the parameter."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query
from phpo.schemas.api import MAX_INT32, MAX_INT64, MAX_PAGE
from phpo.schemas.artifacts import MAX_ARTIFACT_NAME, check_artifact_name
from pydantic import AfterValidator

Id = Annotated[int, Path(ge=1, le=MAX_INT64, description="a record's id (1 to 2^63-1)")]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"items per page (1 to {MAX_PAGE})")]
Offset = Annotated[int, Query(ge=0, le=MAX_INT64, description="items to skip (0 to 2^63-1)")]
OptionalId = Annotated[int | None, Query(ge=1, le=MAX_INT64, description="a record's id (1 to 2^63-1)")]
SegmentIndex = Annotated[
    int | None, Query(ge=0, le=MAX_INT32, description="0-based segment index (0 to 2^31-1)")
]
# the bounds are checked by check_artifact_name (whose message names the offending character) and
# declared in the spec
ArtifactName = Annotated[
    str,
    Query(
        description="the file name downloads get: 1 to 255 printable characters",
        json_schema_extra={
            "minLength": 1,
            "maxLength": MAX_ARTIFACT_NAME,
            "pattern": r"^[^\x00-\x1f\x7f-\x9f]+$",
        },
    ),
    AfterValidator(check_artifact_name),
]
