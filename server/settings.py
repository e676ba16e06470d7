"""The server's settings: one pydantic-settings class, read once (env prefix ``PHPO_``).

Command-line options of ``phpo server`` override the environment; nothing here is built at
import time, so tests can create apps with any settings.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    import os

    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "phpo"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PHPO_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = Field(default=None, description="default: SQLite file data_dir/phpo.db")
    artifact_url: str | None = Field(
        default=None, description="directory or fsspec URL for artifacts; default data_dir/artifacts"
    )
    lease_seconds: float = Field(default=60.0, gt=0)
    reaper_interval: float | None = Field(
        default=None, gt=0, description="default lease_seconds / 4, at most 5 s"
    )
    max_upload_mb: float = Field(default=2048.0, gt=0)
    max_body_mb: float = Field(
        default=8.0, gt=0, description="largest JSON request body (uploads: max_upload_mb)"
    )
    log_level: str = "info"
    manager_interval: float = Field(default=1.0, gt=0, description="seconds between HPO manager passes")
    steering_workers: int = Field(default=4, ge=1, description="threads running optimizer ask/tell")
    steering_retries: int = Field(
        default=3, ge=1, description="failed steering iterations in a row before a task fails"
    )
    run_manager: bool = Field(default=True, description="run the HPO manager loop in this process")
    mlflow_uri: str | None = Field(
        default=None, description="MLflow tracking server: every point becomes a run"
    )
    mlflow_interval: float = Field(default=0.5, gt=0, description="seconds between MLflow bridge passes")
    max_acquire_wait: float = Field(
        default=20.0,
        ge=0,
        le=20.0,
        description="longest long poll of an acquire in seconds, whatever wait_s the agent asks for (a proxy "
        "with a shorter idle timeout in front of the server needs less)",
    )

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        self.data_dir = Path(self.data_dir).expanduser()
        return self

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'phpo.db'}"

    @property
    def effective_artifact_url(self) -> str:
        return self.artifact_url or str(self.data_dir / "artifacts")

    @property
    def effective_reaper_interval(self) -> float:
        if self.reaper_interval is not None:
            return self.reaper_interval
        return max(0.2, min(5.0, self.lease_seconds / 4))

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)
