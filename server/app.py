"""``create_app(settings)``: builds the FastAPI app; nothing is created at import time.

At startup the database is migrated to the newest revision, then the lease reaper and the
HPO manager start as background threads; they stop when the app shuts down.
"""

from __future__ import annotations

import gc
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from phpo.schemas.api import API_PREFIX

from .api.errors import install_error_handlers
from .api.limits import BodyLimits
from .api.openapi import install_openapi
from .api.routes import artifacts, health, jobs, tasks, tokens, ui, workflows
from .context import AppContext
from .db.engine import Database
from .services.artifact_store import ArtifactStore
from .services.health import HealthProbe
from .services.hpo import HpoManager
from .services.job_broker import JobBroker
from .services.lease_reaper import LeaseReaper
from .services.mlflow_bridge import MlflowBridge
from .services.tasks import TaskService
from .services.work_signal import ReadyWork, WorkSignal
from .workflows.engine import WorkflowEngine
from .settings import Settings

log = logging.getLogger(__name__)


def build_context(settings: Settings) -> AppContext:
    """Each part gets what it needs from the others at construction (typed Protocols:
    ``job_broker.SteeringHandler`` (the manager's ``ExternalSteering``) and ``MlflowRuns``,
    ``hpo.AgentWaker``, ``workflows.engine.TaskWaker``); with PostgreSQL the replica signal's
    ``publish_ready`` and ``publish_steer`` are the agents' signal's and the HPO manager's
    ``forward``. Nothing is wired afterwards."""
    from .services.replica_signal import ReplicaSignal

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.effective_database_url)
    store = ArtifactStore(settings.effective_artifact_url)
    # PostgreSQL: wake-ups reach the other replicas on the same database (replica_signal.py);
    # built here, connected when the app starts
    replicas = (
        None
        if db.is_sqlite
        else ReplicaSignal(
            db.url,
            on_ready=lambda n: ready.signal.notify(n, local=True),
            on_steer=lambda segs: manager.wake(segs, local=True),
        )
    )
    # wakes agents waiting in acquire; shared by the broker and the manager
    ready = ReadyWork(WorkSignal(forward=replicas.publish_ready if replicas else None))
    manager = HpoManager(db, settings, waker=ready, forward=replicas.publish_steer if replicas else None)
    mlflow = (
        MlflowBridge(db, settings.mlflow_uri, interval=settings.mlflow_interval, store=store)
        if settings.mlflow_uri
        else None
    )
    # the broker wakes waiting agents itself when a point is ready again
    broker = JobBroker(
        db, settings, on_change=manager.wake, steering=manager.external, mlflow=mlflow, ready=ready
    )

    def changed() -> None:  # submit/resume: steer, and wake waiting agents
        manager.wake()
        ready.notify()

    tasks = TaskService(db, wake=changed)
    workflows = WorkflowEngine(db, wake_tasks=changed)  # its nodes' tasks are steered like submitted ones
    return AppContext(
        settings=settings,
        db=db,
        store=store,
        broker=broker,
        tasks=tasks,
        manager=manager,
        workflows=workflows,
        health=HealthProbe(db, store),
        mlflow=mlflow,
        replicas=replicas,
    )


def _start_replica_signal(ctx: AppContext) -> None:
    """PostgreSQL: the replica signal starts listening and publishing."""
    sig = ctx.replicas
    if sig is None:
        return
    sig.start()
    ctx.background.append(sig)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    ctx = build_context(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        ctx.db.migrate()
        reaper = LeaseReaper(ctx.broker, settings.effective_reaper_interval)
        reaper.start()
        ctx.background.append(reaper)
        if settings.run_manager:
            ctx.manager.start()
            ctx.background.append(ctx.manager)
            ctx.workflows.start()
            ctx.background.append(ctx.workflows)
        if not ctx.db.is_sqlite:
            _start_replica_signal(ctx)
        if ctx.mlflow is not None:
            ctx.mlflow.start()
            ctx.background.append(ctx.mlflow)
            log.info("MLflow bridge: every point becomes a run at %s", settings.mlflow_uri)
        log.info(
            "phpo server ready: database %s, artifacts %s", ctx.db.backend, settings.effective_artifact_url
        )
        # what start-up made (the libraries, the settings, the routes: ~140,000 objects) stays
        # out of Python's full garbage collections from now on: under load they took ~55 ms each,
        # every few seconds, with no request answered meanwhile; ~10 ms after this
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            for b in reversed(ctx.background):
                b.stop()
            ctx.background.clear()
            ctx.db.dispose()

    app = FastAPI(
        title="phpo",
        version="0.1.0",
        lifespan=lifespan,
        description="HPO tasks, steering and evaluation jobs (see phpo.schemas.api for the route table)",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
    )
    app.state.ctx = ctx
    install_error_handlers(app)
    app.add_middleware(BodyLimits, json_limit=settings.max_body_bytes, upload_limit=settings.max_upload_bytes)
    for r in (
        health.router,
        tokens.router,
        tasks.router,
        jobs.router,
        artifacts.router,
        workflows.router,
        ui.api,
    ):
        app.include_router(r, prefix=API_PREFIX)
    app.include_router(ui.pages)  # the web view, /ui/
    install_openapi(app)
    return app
