"""The ASGI app of ``phpo serve`` (routes in docs/serving.md).

``create_app(config)`` builds it; ``app_from_env`` is the factory every uvicorn worker calls
(the settings come as JSON in ``PHPO_SERVE_CONFIG``). Nothing is created at import time.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import shutil
import tempfile
import time
from collections import deque
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from .auth import AuthError, Caller, TokenChecker
from .batching import MicroBatcher
from .catalog import Catalog, CatalogError, Entry, parse_ref, settle_heap
from .config import ServeConfig
from .inputs import InputError, rows_of

log = logging.getLogger("phpo.serving")
MAX_UPLOAD = 512 * 2**20


def _tolist(a: Any) -> Any:
    if hasattr(a, "tolist"):
        return a.tolist()
    raise TypeError(f"cannot write {type(a).__name__} as JSON")


try:  # the hot path's JSON: orjson parses a one-row body ~30x faster than json (the serving extra has it)
    import orjson

    _loads = orjson.loads

    def _dumps(body: Any) -> bytes:  # numpy arrays written directly; any other dtype or layout via tolist
        return orjson.dumps(body, default=_tolist, option=orjson.OPT_SERIALIZE_NUMPY)
except ImportError:  # pragma: no cover - without the serving extra's orjson
    _loads = json.loads

    def _dumps(body: Any) -> bytes:
        return json.dumps(body, default=_tolist).encode()


class _Json(Response):
    media_type = "application/json"


def _error(status: int, code: str, message: str, field: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if field:
        body["field"] = field
    return JSONResponse(body, status_code=status)


_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    413: "too_large",
    422: "validation_error",
    503: "unavailable",
}


class _Metrics:
    """Prometheus metrics; with several workers they are summed over all of them
    (prometheus_client's multiprocess mode, files in PROMETHEUS_MULTIPROC_DIR)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multi = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = None if self.multi else CollectorRegistry()
        reg = self.registry
        self.requests = Counter("phpo_serve_requests", "prediction requests", ["model", "code"], registry=reg)
        self.latency = Histogram(
            "phpo_serve_request_seconds",
            "time to answer a prediction request",
            ["model"],
            registry=reg,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.batch_rows = Histogram(
            "phpo_serve_batch_rows",
            "rows per call of the model",
            ["model"],
            registry=reg,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
        )
        self.batch_requests = Histogram(
            "phpo_serve_batch_requests",
            "requests per call of the model",
            ["model"],
            registry=reg,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )

        self.gc_pause = Histogram(
            "phpo_serve_gc_pause_seconds",
            "full (generation 2) garbage collections of a worker: no request is answered meanwhile",
            registry=reg,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
        )
        kw = {"multiprocess_mode": "max"} if self.multi else {}
        self.gc_frozen = Gauge(
            "phpo_serve_gc_frozen_objects",
            "objects a worker keeps out of garbage collections (the libraries and loaded models)",
            registry=reg,
            **kw,
        )
        self._pauses: deque[float] = deque(maxlen=4096)
        self._gc_start = 0.0
        gc.callbacks.append(self._gc_seen)

    def _gc_seen(self, phase: str, info: dict) -> None:
        """Only notes the time: a callback that runs inside a collection must take no lock (the
        histogram's own would deadlock against a thread interrupted while holding it)."""
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self._pauses.append(time.perf_counter() - self._gc_start)

    def flush_gc(self, only_if_seen: bool = False) -> None:
        """The collections seen since the last call into the histogram (done between requests)."""
        if only_if_seen and not self._pauses:
            return
        while self._pauses:
            self.gc_pause.observe(self._pauses.popleft())
        self.gc_frozen.set(gc.get_freeze_count())

    def close(self) -> None:
        if self._gc_seen in gc.callbacks:
            gc.callbacks.remove(self._gc_seen)

    def text(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        if self.multi:
            reg = CollectorRegistry()
            MultiProcessCollector(reg)
            return generate_latest(reg)
        return generate_latest(self.registry)


class Service:
    def __init__(self, config: ServeConfig):
        self.config = config
        self.catalog = Catalog(config.mlflow_uri, config.state_dir)
        self.auth = TokenChecker(config.phpo_url, config.auth_cache_s)
        self.metrics = _Metrics()
        self.batchers: dict[str, MicroBatcher] = {}
        self.waiting: set[str] = set()  # tasks/workflows whose models are not all known yet

    def batcher(self, e: Entry) -> MicroBatcher:
        b = self.batchers.get(e.key)
        if b is None:

            def seen(n_req: int, n_rows: int, key: str = e.key) -> None:
                self.metrics.batch_rows.labels(key).observe(n_rows)
                self.metrics.batch_requests.labels(key).observe(n_req)

            b = self.batchers[e.key] = MicroBatcher(
                e.predict, self.config.batch_window_ms, self.config.batch_max_rows, seen, self.config.batching
            )
        return b

    # ------------------------------------------------------------ what to serve

    def start_models(self) -> None:
        for ref in self.config.models:
            name, version = parse_ref(ref)
            e = self.catalog.registered(name, version)
            e.load()
            self.catalog.add_static(e)
        self.waiting = {f"task:{t}" for t in self.config.tasks} | {
            f"workflow:{w}" for w in self.config.workflows
        }

    async def follow(self) -> None:
        """Tasks and workflows named at start: their models are taken as soon as registered."""
        while self.waiting:
            await asyncio.sleep(self.config.follow_interval_s)
            await self.follow_once()

    async def follow_once(self) -> None:
        for what in sorted(self.waiting):
            try:
                refs, complete = await self._refs(what)
                for ref in refs:
                    name, version = parse_ref(ref)
                    if f"{name}:{version}" not in self.catalog.entries:
                        e = await asyncio.to_thread(self.catalog.registered, name, version)
                        await asyncio.to_thread(e.load)
                        self.catalog.add_static(e)
                        log.info("serving %s (%s)", e.key, what)
                if complete:
                    self.waiting.discard(what)
            except Exception as e:  # noqa: BLE001 - the phpo server or MLflow not there yet: again later
                log.warning("%s: models not taken yet: %s", what, e)

    async def _refs(self, what: str) -> tuple[list[str], bool]:
        kind, _, ident = what.partition(":")
        headers = {"Authorization": f"Bearer {self.config.token}"} if self.config.token else {}
        async with httpx.AsyncClient(
            base_url=self.config.phpo_url.rstrip("/") + "/api/v1", headers=headers, timeout=30
        ) as c:
            if kind == "task":
                r = await c.get(f"/tasks/{ident}/models")
                r.raise_for_status()
                ms = r.json()
                refs = [f"{m['name']}:{m['version']}" for m in ms if m["status"] == "registered"]
                return refs, all(m["status"] != "pending" for m in ms)
            r = await c.get(f"/workflows/{ident}")
            r.raise_for_status()
            wf = r.json()
            refs = []
            stack = list(wf.get("nodes") or [])
            while stack:
                n = stack.pop()
                stack.extend(n.get("children") or [])
                if n.get("kind") == "serve" and n.get("state") == "done":
                    refs += [
                        f"{m['name']}:{m['version']}" for m in (n.get("results") or {}).get("models", [])
                    ]
            return refs, wf.get("state") in ("succeeded", "failed", "cancelled")

    # ------------------------------------------------------------ names and uploads

    def name_model(self, caller: Caller, name: str, version: str) -> Entry:
        e = self.catalog.registered(name, version)
        if not caller.can_use(e.owner):
            raise CatalogError(
                403,
                f"model {name}:{version} belongs to {e.owner or 'no phpo user'}; "
                f"'{caller.name}' may serve only its own",
                field="name",
            )
        e.load()  # refuse what cannot be loaded before anyone else sees it
        return self.catalog.add_shared(lambda entries: entries.get(e.key, e))

    def upload(self, caller: Caller, name: str, data: bytes) -> Entry:
        from phpo.schemas.archives import ArchiveError, ArchiveLimits, extract
        from phpo.schemas.models import model_name

        if model_name(0, name) != name:
            raise CatalogError(
                422, f"model name {name!r}: use letters, digits, '.', '_' and '-' only", field="name"
            )
        with tempfile.TemporaryDirectory(dir=self.config.state_dir) as tmp:
            tarball = Path(tmp) / "model.tar.gz"
            tarball.write_bytes(data)
            unpacked = Path(tmp) / "unpacked"
            unpacked.mkdir()
            try:
                extract(tarball, unpacked, limits=ArchiveLimits(max_total_bytes=MAX_UPLOAD))
            except (ArchiveError, OSError, EOFError) as e:
                raise CatalogError(
                    422, f"the body must be a tar.gz of an MLflow model folder: {e}", field="body"
                ) from e
            found = sorted(unpacked.rglob("MLmodel"), key=lambda p: len(p.parts))
            if not found:
                raise CatalogError(
                    422,
                    "the tarball holds no MLmodel file: tar an MLflow model folder "
                    "(mlflow.<flavor>.save_model)",
                    field="body",
                )
            folder = found[0].parent

            def make(entries: dict[str, Entry]) -> Entry:
                same = [e for e in entries.values() if e.name == name]
                if any(e.origin != "upload" or not caller.can_use(e.owner) for e in same):
                    raise CatalogError(
                        409,
                        f"model name {name!r} is taken by another model here; choose another",
                        field="name",
                    )
                version = str(max((int(e.version) for e in same), default=0) + 1)
                dest = self.config.state_dir / "uploads" / name / version
                shutil.rmtree(dest, ignore_errors=True)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(folder, dest)
                e = Entry(name=name, version=version, uri=str(dest), owner=caller.name, origin="upload")
                try:
                    e.load()
                except Exception as err:  # noqa: BLE001
                    shutil.rmtree(dest, ignore_errors=True)
                    raise CatalogError(
                        422, f"MLflow cannot load the uploaded model: {err}", field="body"
                    ) from err
                return e

            return self.catalog.add_shared(make)


def create_app(config: ServeConfig) -> FastAPI:
    svc = Service(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        config.state_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(svc.start_models)
        await svc.follow_once()  # what is registered already is served from the first request on
        settle_heap()  # after start-up: see its docstring (full collections of ~100 ms otherwise)
        follower = asyncio.create_task(svc.follow())
        yield
        follower.cancel()
        for b in svc.batchers.values():
            await b.close()
        svc.metrics.close()
        await svc.auth.close()

    app = FastAPI(title="phpo serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = svc

    @app.exception_handler(AuthError)
    async def _auth(_r: Request, e: AuthError) -> JSONResponse:
        return _error(e.status, _CODES[e.status], e.message, "Authorization")

    @app.exception_handler(CatalogError)
    async def _cat(_r: Request, e: CatalogError) -> JSONResponse:
        return _error(e.status, _CODES.get(e.status, "error"), e.message, e.field)

    @app.exception_handler(InputError)
    async def _inp(_r: Request, e: InputError) -> JSONResponse:
        return _error(422, "validation_error", e.message, e.field)

    async def caller(request: Request) -> Caller:
        return await svc.auth.caller(request.headers.get("authorization"))

    async def json_body(request: Request) -> Any:
        try:
            return _loads(await request.body())
        except ValueError as e:  # orjson.JSONDecodeError is a ValueError
            raise InputError(f"the body is not JSON: {e}", "body") from e

    def visible(c: Caller, e: Entry) -> Entry:
        if not c.can_use(e.owner):
            raise CatalogError(
                403,
                f"model {e.key} belongs to {e.owner or 'no phpo user'}; "
                f"'{c.name}' may use only its own models",
                field="name",
            )
        return e

    @app.get("/health")
    async def health() -> dict[str, Any]:
        svc.catalog.refresh()
        return {"status": "ok", "models": sorted(svc.catalog.entries), "waiting_for": sorted(svc.waiting)}

    @app.get("/metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        svc.metrics.flush_gc()
        return Response(svc.metrics.text(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        c = await caller(request)
        svc.catalog.refresh()
        return {
            "models": [
                e.describe()
                for e in sorted(svc.catalog.entries.values(), key=lambda e: e.key)
                if c.can_use(e.owner)
            ]
        }

    @app.get("/v1/models/{name}/{version}")
    async def model_info(name: str, version: str, request: Request) -> dict[str, Any]:
        e = visible(await caller(request), svc.catalog.get(name, version))
        await asyncio.to_thread(e.load)
        return e.describe()

    @app.post("/v1/models", status_code=201)
    async def add_model(request: Request) -> dict[str, Any]:
        c = await caller(request)
        body = await json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise InputError('the body needs "name" (and "version") of a model in MLflow\'s registry', "name")
        version = body.get("version")
        if not (isinstance(version, int) and not isinstance(version, bool)) and not (
            isinstance(version, str) and version.isdigit()
        ):
            raise InputError('"version" must be a version number of the registered model', "version")
        e = await asyncio.to_thread(svc.name_model, c, body["name"], str(version))
        return e.describe()

    @app.put("/v1/models/{name}", status_code=201)
    async def upload_model(name: str, request: Request) -> dict[str, Any]:
        c = await caller(request)
        data = await request.body()
        if len(data) > MAX_UPLOAD:
            raise CatalogError(413, f"the upload is over {MAX_UPLOAD} bytes", field="body")
        e = await asyncio.to_thread(svc.upload, c, name, data)
        return e.describe()

    async def predict(request: Request, name: str, version: str | None) -> Response:
        t0 = time.perf_counter()
        code = "200"
        key = name if version is None else f"{name}:{version}"
        try:
            c = await caller(request)
            e = visible(c, svc.catalog.get(name, version))
            key = e.key
            if e._model is None:
                await asyncio.to_thread(e.load)
            body = request.state.body if hasattr(request.state, "body") else await json_body(request)
            x = rows_of(body, e.n_features, e.dtype, config.max_rows)
            out = await svc.batcher(e).submit(x)
            return _Json(_dumps({"model": e.name, "version": e.version, "predictions": out}))
        except (AuthError, CatalogError, InputError) as err:
            code = str(getattr(err, "status", 422))
            raise
        finally:
            svc.metrics.requests.labels(key, code).inc()
            svc.metrics.latency.labels(key).observe(time.perf_counter() - t0)
            svc.metrics.flush_gc(only_if_seen=True)

    @app.post("/v1/models/{name}/predict")
    async def predict_latest(name: str, request: Request) -> Response:
        return await predict(request, name, None)

    @app.post("/v1/models/{name}/{version}/predict")
    async def predict_version(name: str, version: str, request: Request) -> Response:
        return await predict(request, name, version)

    @app.post("/json")
    async def tfaas_json(request: Request) -> Response:
        """TFaaS's route: ``{"keys": [...], "values": [...], "model": NAME}`` (latest version)."""
        body = await json_body(request)
        name = body.get("model") if isinstance(body, dict) else None
        if not isinstance(name, str):
            raise InputError('TFaaS form: the body needs "model" (the model name)', "model")
        request.state.body = body  # parsed once
        return await predict(request, name, None)

    return app


def app_from_env() -> FastAPI:
    """The uvicorn factory (``phpo serve`` sets the settings)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return create_app(ServeConfig.from_env())
