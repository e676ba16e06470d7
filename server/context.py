"""Everything one running server holds, built by :func:`phpo.server.app.create_app`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .db.engine import Database
from .services.artifact_store import ArtifactStore
from .services.job_broker import JobBroker
from .services.tasks import TaskService
from .settings import Settings


@dataclass
class AppContext:
    settings: Settings
    db: Database
    store: ArtifactStore
    broker: JobBroker
    tasks: TaskService
    manager: Any = None  # HpoManager, when running
    workflows: Any = None  # WorkflowEngine
    mlflow: Any = None  # MlflowBridge, when --mlflow-uri / PHPO_MLFLOW_URI is set
    health: Any = None  # HealthProbe
    background: list[Any] = field(default_factory=list)
