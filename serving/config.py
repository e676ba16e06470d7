"""The service's settings: given on the ``phpo serve`` command line, handed to every uvicorn
worker as JSON in one environment variable (workers are separate processes)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

ENV_CONFIG = "PHPO_SERVE_CONFIG"


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(default_factory=list, description="NAME:VERSION of registered models")
    tasks: list[int] = Field(default_factory=list, description="tasks whose segments' models are all served")
    workflows: list[int] = Field(
        default_factory=list, description="workflows whose serve nodes' models are served"
    )
    mlflow_uri: str
    phpo_url: str = Field(description="the phpo server: tokens are checked there (GET /api/v1/me)")
    token: str | None = Field(
        default=None, description="the service's own phpo token, to look up --task/--workflow"
    )
    state_dir: Path = Field(description="uploaded models, the shared catalogue, Prometheus files")
    batching: bool = Field(default=True, description="micro-batch concurrent requests to one model")
    batch_window_ms: float = Field(default=0.0, ge=0, description="how long a batch waits for more requests")
    batch_max_rows: int = Field(default=1024, ge=1, description="rows at which a batch is sent at once")
    auth_cache_s: float = Field(default=5.0, ge=0, description="how long a checked token is trusted")
    max_rows: int = Field(default=10_000, ge=1, description="rows one request may hold")
    follow_interval_s: float = Field(default=5.0, gt=0, description="how often --workflow is looked at again")

    def to_env(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_env(cls) -> ServeConfig:
        raw = os.environ.get(ENV_CONFIG)
        if not raw:
            raise RuntimeError(f"{ENV_CONFIG} is not set: start the service with phpo serve")
        return cls.model_validate(json.loads(raw))
