"""Everything one running server holds, built by :func:`phpo.server.app.build_context`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from .db.engine import Database
from .services.artifact_store import ArtifactStore
from .services.health import HealthProbe
from .services.hpo import HpoManager
from .services.job_broker import JobBroker
from .services.mlflow_bridge import MlflowBridge
from .services.replica_signal import ReplicaSignal
from .services.tasks import TaskService
from .workflows.engine import WorkflowEngine
from .settings import Settings


class Background(Protocol):
    """A loop the server starts with the app and stops at shutdown."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass
class AppContext:
    settings: Settings
    db: Database
    store: ArtifactStore
    broker: JobBroker
    tasks: TaskService
    manager: HpoManager
    workflows: WorkflowEngine
    health: HealthProbe
    mlflow: MlflowBridge | None = None  # when --mlflow-uri / PHPO_MLFLOW_URI is set
    replicas: ReplicaSignal | None = None  # PostgreSQL: wake-ups between replicas (started with the app)
    background: list[Background] = field(default_factory=list)
