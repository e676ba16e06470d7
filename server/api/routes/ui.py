"""The web view and what it reads beside the task routes: plots and MLflow run links.

- ``GET /ui/`` and ``/ui/{file}``: the static web view (HTML, JS, CSS shipped in the package, and
  plotly.js from the installed plotly package: nothing is fetched from the internet). The page
  itself holds no data; it calls the API with the user's bearer token, so the same tokens and the
  same ownership rules apply.
- ``GET /api/v1/tasks/{id}/plots/{kind}?segment=``: a plotly figure as JSON
  (:mod:`phpo.server.ui.plots`).
- ``GET /api/v1/tasks/{id}/runs``: the MLflow run of each point (and of each segment), with a
  link into the MLflow UI where the tracking server is an http(s) one.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from ...repositories.mlflow_runs import task_runs
from ...errors import ApiError, Conflict, InvalidInput, NotFound
from ...repositories.points import list_points
from ...repositories.segments import list_segments
from ...repositories.tasks import get_task_row, task_to_schema
from ..deps import Ctx, UserCaller
from ..params import Id, SegmentIndex

api = APIRouter(tags=["ui"])
pages = APIRouter(include_in_schema=False)

STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


@api.get(
    "/tasks/{task_id}/plots/{kind}",
    response_model=dict[str, Any],
    responses={
        400: {"description": "this plot does not apply to this task"},
        404: {"description": "no such task, or an unknown kind"},
        409: {"description": "too few points for this plot yet"},
    },
)
def get_plot(task_id: Id, kind: str, ctx: Ctx, caller: UserCaller, segment: SegmentIndex = None) -> Response:
    """A plotly figure (``{"data": [...], "layout": {...}}``) of the task: ``kind`` is history,
    parallel, importance, intermediate, pareto or segments. A segmented task's per-point plots
    draw ``segment`` (default the first). 409 ``not_enough_points`` while the task has too few
    points for that plot; 400 where the plot does not apply (a Pareto front of one objective)."""
    try:
        from ...ui import plots
    except ImportError as e:  # pragma: no cover - plotly is part of phpo[server]
        raise ApiError(f"plots need plotly on the server ({e}); install phpo[plots]") from None
    if kind not in plots.KINDS:
        raise NotFound(f"unknown plot kind '{kind}'; kinds: {', '.join(plots.KINDS)}", field="kind")
    with ctx.db.read() as s:
        row = get_task_row(s, task_id, caller)
        task = task_to_schema(s, row)
        if segment is not None and not 0 <= segment < task.n_segments:
            raise InvalidInput(
                f"segment {segment} does not exist; the task has segments 0..{task.n_segments - 1}",
                field="segment",
            )
        segments, points, truncated = [], [], False
        if kind == "segments":
            segments, _ = list_segments(s, row, limit=max(1, task.n_segments), offset=0, sort=None)
        else:
            seg = plots.segment_to_plot(task, segment)
            points, total = _points(s, task_id, seg, plots.MAX_PLOT_POINTS)
            truncated = total > len(points)
    try:
        body = plots.draw_json(kind, task, points, segments, segment=segment, truncated=truncated)
    except plots.NotEnoughData as e:
        raise Conflict(str(e), field="kind", code="not_enough_points") from None
    except plots.WrongKind as e:
        raise ApiError(str(e), field="kind", code="plot_not_applicable") from None
    return Response(body, media_type="application/json")


def _points(s: Any, task_id: int, segment: int | None, cap: int) -> tuple[list, int]:
    """The task's points that have run, earliest evaluated first, at most ``cap``."""
    out: list = []
    total = 0
    while len(out) < cap:
        n = min(1000, cap - len(out))
        items, total = list_points(
            s,
            task_id,
            segment=segment,
            state=["evaluated", "failed", "leased", "ready"],
            limit=n,
            offset=len(out),
            sort="evaluated_at",
        )
        out += items
        if len(items) < n:
            break
    return out, total


@api.get("/tasks/{task_id}/runs", response_model=dict[str, Any])
def get_runs(task_id: Id, ctx: Ctx, caller: UserCaller) -> dict[str, Any]:
    """The MLflow runs of the task's points: ``{"mlflow": URL|null, "points": {point_id: {run_id,
    experiment_id, url}}, "segments": {segment_id: {...}}}``. ``url`` opens the run in the MLflow
    UI (null where the tracking URI is not a web server, or the server has no MLflow)."""
    base = ctx.settings.mlflow_uri or ""
    web = base.rstrip("/") if base.startswith(("http://", "https://")) else None
    with ctx.db.read() as s:
        get_task_row(s, task_id, caller)
        runs, parents = task_runs(s, task_id=task_id)

    def one(eid: str, rid: str) -> dict[str, Any]:
        return {
            "experiment_id": eid,
            "run_id": rid,
            "url": f"{web}/#/experiments/{eid}/runs/{rid}" if web else None,
        }

    return {
        "mlflow": web,
        "points": {str(p): one(e, r) for p, e, r in runs},
        "segments": {str(g): one(e, r) for g, e, r in parents},
    }


# --- the static web view -------------------------------------------------------------------


def _static_dir() -> Path:
    return Path(str(resources.files("phpo.server.ui") / "static"))


@lru_cache(maxsize=16)
def _asset(name: str) -> tuple[bytes, bytes, str]:
    """(bytes, gzipped bytes, content type) of a static file; plotly.min.js from plotly itself."""
    if name == "plotly.min.js":
        import plotly

        path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    else:
        path = _static_dir() / name
    data = path.read_bytes()
    return data, gzip.compress(data, 6), STATIC_TYPES[path.suffix]


def _serve(request: Request, name: str) -> Response:
    try:
        data, packed, ctype = _asset(name)
    except (OSError, KeyError, ImportError):
        return Response(
            json.dumps(
                {
                    "code": "not_found",
                    "message": f"no such file of the web view: {name}",
                    "field": None,
                    "details": None,
                }
            ),
            status_code=404,
            media_type="application/json",
        )
    # every file but plotly.js may change with a new phpo: revalidate; plotly.js is versioned by plotly
    headers = {
        "Cache-Control": "public, max-age=86400" if name == "plotly.min.js" else "no-cache",
        "Vary": "Accept-Encoding",
        "X-Content-Type-Options": "nosniff",
    }
    if name.endswith(".html"):
        headers["Referrer-Policy"] = "no-referrer"  # a ?token=... address never leaves in a Referer
    if "gzip" in request.headers.get("accept-encoding", ""):
        headers["Content-Encoding"] = "gzip"
        return Response(packed, media_type=ctype, headers=headers)
    return Response(data, media_type=ctype, headers=headers)


@pages.get("/ui")
def ui_root(request: Request) -> RedirectResponse:
    query = request.url.query
    return RedirectResponse("/ui/" + (f"?{query}" if query else ""), status_code=307)


@pages.get("/ui/")
def ui_index(request: Request) -> Response:
    return _serve(request, "index.html")


@pages.get("/ui/{name}")
def ui_file(request: Request, name: str) -> Response:
    if "/" in name or name.startswith(".") or Path(name).suffix not in STATIC_TYPES:
        return _serve(request, "")  # answers 404
    return _serve(request, name)
