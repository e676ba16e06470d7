"""Segment summaries (segmented HPO, docs/compatibility.md)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .points import Loss


class Segment(BaseModel):
    id: int
    task_id: int
    name: str
    files: list[str] = []
    finished: bool = False
    n_ready: int = 0
    n_leased: int = 0
    n_evaluated: int = 0
    n_failed: int = 0
    n_pruned: int = 0
    n_jobs: int = 0
    best_loss: Loss | None = None
    best_params: dict[str, Any] | None = None
