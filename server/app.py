"""``create_app(settings)``: builds the FastAPI app; nothing is created at import time.

At startup the database is migrated to the newest revision, then the lease reaper and the
HPO manager start as background threads; they stop when the app shuts down.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from phpo.schemas.api import API_PREFIX

from .api.errors import install_error_handlers
from .api.limits import BodyLimits
from .api.openapi import install_openapi
from .api.routes import artifacts, health, jobs, tasks, tokens, workflows
from .context import AppContext
from .db.engine import Database
from .services.artifact_store import ArtifactStore
from .services.job_broker import JobBroker
from .services.lease_reaper import LeaseReaper
from .services.tasks import TaskService
from .services.workflow_engine import WorkflowEngine
from .settings import Settings

log = logging.getLogger(__name__)


def build_context(settings: Settings) -> AppContext:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.effective_database_url)
    store = ArtifactStore(settings.effective_artifact_url)
    broker = JobBroker(db, settings)
    ctx = AppContext(settings=settings, db=db, store=store, broker=broker, tasks=TaskService(db))
    from .services.health import HealthProbe

    ctx.health = HealthProbe(db, store)
    from .services.hpo_manager import HpoManager

    manager = HpoManager(db, settings, broker)
    ctx.manager = manager
    broker.steering = manager

    def changed() -> None:  # submit/resume: steer, and wake waiting agents
        manager.wake()
        broker.work.notify()

    broker.on_change = manager.wake  # the broker wakes waiting agents itself when a point is ready again
    ctx.tasks.wake = changed
    ctx.workflows = WorkflowEngine(ctx)
    if settings.mlflow_uri:
        from .services.mlflow_bridge import MlflowBridge

        ctx.mlflow = MlflowBridge(db, settings.mlflow_uri, interval=settings.mlflow_interval, store=store)
        broker.mlflow = ctx.mlflow
    return ctx


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
        if ctx.mlflow is not None:
            ctx.mlflow.start()
            ctx.background.append(ctx.mlflow)
            log.info("MLflow bridge: every point becomes a run at %s", settings.mlflow_uri)
        log.info("phpo server ready: database %s, artifacts %s", ctx.db.backend, settings.effective_artifact_url)
        try:
            yield
        finally:
            for b in reversed(ctx.background):
                b.stop()
            ctx.background.clear()
            ctx.db.dispose()

    app = FastAPI(title="phpo", version="0.1.0", lifespan=lifespan,
                  description="HPO tasks, steering and evaluation jobs (see phpo.schemas.api for the route table)",
                  openapi_url=f"{API_PREFIX}/openapi.json", docs_url=f"{API_PREFIX}/docs", redoc_url=None)
    app.state.ctx = ctx
    install_error_handlers(app)
    app.add_middleware(BodyLimits, json_limit=settings.max_body_bytes, upload_limit=settings.max_upload_bytes)
    for r in (health.router, tokens.router, tasks.router, jobs.router, artifacts.router, workflows.router):
        app.include_router(r, prefix=API_PREFIX)
    install_openapi(app)
    return app
