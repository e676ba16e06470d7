"""``Client``: the Python API of phpo, one method per thing a user does with a task.

Every method is one or a few calls of the REST route table (:mod:`phpo.schemas.api`) and returns
:mod:`phpo.schemas` models; collections come back as :class:`~phpo.client.tables.Table` (a list
that renders in Jupyter). Errors the server answers become :mod:`phpo.client.errors` exceptions
carrying the server's own message.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from phpo.schemas import (
    Artifact,
    ArtifactKind,
    BestPoint,
    Health,
    Me,
    Point,
    RegisteredModel,
    Segment,
    SteeringIteration,
    Task,
    TaskSpec,
)
from phpo.schemas.errors import validation_messages
from phpo.schemas.states import TERMINAL_TASK_STATES

from ._http import HttpBase, raise_for_answer
from .errors import InvalidInput, NotFound, PhpoError, ServerUnreachable
from .notebook import NotebookProgress, TaskCard, in_notebook
from .progress import TaskProgress
from .sandbox import DEFAULT_MAX_BYTES, SandboxPlan, build_sandbox, pack, plan_sandbox
from .specfiles import resolve_spec_files
from .tables import Table
from .workflows import WorkflowMethods

M = TypeVar("M", bound=BaseModel)

PAGE_SIZE = 500


def validate_spec(spec: TaskSpec | dict[str, Any] | None = None, **options: Any) -> TaskSpec:
    """A :class:`TaskSpec` from a spec or dict plus keyword options (options win).

    Checked here so a mistake is reported before anything is uploaded; the refusal is the same
    :class:`InvalidInput` the server would answer, with ``field`` naming the option.
    """
    data = _spec_data(spec)
    data.update(options)
    try:
        return TaskSpec.model_validate(data)
    except ValidationError as e:
        raise spec_error(e) from None


def _spec_data(spec: TaskSpec | dict[str, Any] | None) -> dict[str, Any]:
    if isinstance(spec, TaskSpec):
        return spec.model_dump(exclude_unset=True)
    if spec is None:
        return {}
    if isinstance(spec, dict):
        return dict(spec)
    raise TypeError(f"spec must be a TaskSpec or a dict, not {type(spec).__name__}")


def spec_error(e: ValidationError) -> InvalidInput:
    errs = e.errors()
    field, message = validation_messages(e)
    return InvalidInput(
        422,
        "validation_error",
        message,
        field or None,
        [{k: v for k, v in x.items() if k in ("loc", "msg", "type")} for x in errs],
    )


class Client(WorkflowMethods, HttpBase):
    """The phpo client. ``url``/``token`` default to ``PHPO_URL``/``PHPO_TOKEN``, then the config
    file ``phpo up`` writes. Use as a context manager, or call :meth:`close`.

    >>> with Client() as c:                                            # doctest: +SKIP
    ...     t = c.submit(evaluationExec="python train.py", searchSpace={...}, maxPoints=20)
    ...     c.wait(t.id)
    ...     c.best(t.id)
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
    ):
        super().__init__(url, token, timeout=timeout, transport=transport)
        self.last_sandbox: SandboxPlan | None = None  # what the last submit shipped

    def __enter__(self) -> Client:
        return self

    # --- service ----------------------------------------------------------------------

    def health(self) -> Health:
        return Health.model_validate(self.request("GET", "/health").json())

    def me(self) -> Me:
        return Me.model_validate(self.request("GET", "/me").json())

    # --- tasks ------------------------------------------------------------------------

    def submit(
        self,
        spec: TaskSpec | dict[str, Any] | None = None,
        *,
        directory: str | Path | None = ".",
        sandbox_files: Iterable[str] = (),
        **options: Any,
    ) -> Task:
        """Create a task the way ``phpo submit`` does from ``directory`` (default: the current one).

        ``options`` are TaskSpec fields (``evaluationExec=...``) and win over ``spec``.
        ``searchSpaceFile``, ``segmentSpecFile`` and ``trainingDS`` are read relative to
        ``directory`` (unless ``searchSpace``/``segments``/``trainingFiles`` are given), and the
        sandbox, the ``*.json *.py *.sh *.yaml`` files under ``directory`` plus ``sandbox_files``,
        is uploaded with the task, so ``evaluationExec="python train.py"`` finds ``train.py``.
        ``sandbox=ID`` uses one uploaded before (:meth:`upload_sandbox`), ``sandbox=None`` or
        ``directory=None`` ships none. What was shipped: :attr:`last_sandbox`.
        """
        data = _spec_data(spec)
        data.update(options)
        if directory is not None:
            data = resolve_spec_files(data, directory)
        s = validate_spec(data)  # before the upload: a mistake costs no transfer
        self.last_sandbox = None
        if directory is not None and "sandbox" not in data:
            plan = plan_sandbox(directory, sandbox_files)
            tarball = pack(plan)
            if tarball is not None:
                s = validate_spec(data, sandbox=self.upload_tarball(tarball))
                self.last_sandbox = plan
        r = self.request("POST", "/tasks", json=s.model_dump(mode="json", exclude_unset=True))
        return Task.model_validate(r.json())

    def tasks(
        self, state: str | None = None, name: str | None = None, limit: int = 100, offset: int = 0
    ) -> Table[Task]:
        """Your tasks, newest first as the server sorts them; ``state``/``name`` filter."""
        params = _params(state=state, name=name, limit=limit, offset=offset)
        page = self.request("GET", "/tasks", params=params).json()
        return Table(Task.model_validate(x) for x in page["items"])

    def task(self, task_id: int) -> Task:
        return Task.model_validate(self.request("GET", f"/tasks/{int(task_id)}").json())

    def cancel(self, task_id: int) -> Task:
        return self._action(task_id, "cancel")

    def pause(self, task_id: int) -> Task:
        return self._action(task_id, "pause")

    def resume(self, task_id: int) -> Task:
        return self._action(task_id, "resume")

    def _action(self, task_id: int, action: str) -> Task:
        return Task.model_validate(self.request("POST", f"/tasks/{int(task_id)}/{action}").json())

    # --- what a task holds ------------------------------------------------------------

    def points(
        self,
        task_id: int,
        segment: int | str | None = None,
        state: str | None = None,
        sort: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> Table[Point]:
        """Every point of the task (all pages), optionally of one segment or in one state.

        ``sort`` is id (default), serial, loss, created_at or evaluated_at, ``-loss`` descending;
        points without a loss come last either way. ``limit``/``offset`` take one slice of that
        order (default: all points).
        """
        seg = self._segment_id(task_id, segment)
        path = f"/tasks/{int(task_id)}/points"
        params = _params(segment=seg, state=state, sort=sort)
        if limit is None and not offset:
            return Table(self._pages(path, Point, params))
        return Table(self._slice(path, Point, params, limit, offset))

    def best(self, task_id: int, segment: int | str | None = None) -> Table[BestPoint]:
        """The best point of each segment (one entry for an unsegmented task)."""
        seg = self._segment_id(task_id, segment)
        r = self.request("GET", f"/tasks/{int(task_id)}/best", params=_params(segment=seg))
        return Table(BestPoint.model_validate(x) for x in r.json())

    def models(self, task_id: int) -> Table[RegisteredModel]:
        """Where the best model of each segment is registered in MLflow (``status`` pending until
        the segment has ended and the MLflow bridge registered it)."""
        r = self.request("GET", f"/tasks/{int(task_id)}/models")
        return Table(RegisteredModel.model_validate(x) for x in r.json())

    def _segment_id(self, task_id: int, segment: int | str | None) -> int | None:
        """Segments are addressed by id (their 0-based position); a name is looked up."""
        if segment is None or isinstance(segment, int):
            return segment
        if str(segment).isdigit():
            return int(segment)
        segs = self.segments(task_id)
        for g in segs:
            if g.name == segment:
                return g.id
        raise NotFound(
            404,
            "not_found",
            f"task {task_id} has no segment named '{segment}' "
            f"(its segments: {', '.join(g.name for g in segs) or 'none'})",
            "segment",
        )

    def segments(
        self, task_id: int, sort: str | None = None, limit: int | None = None, offset: int = 0
    ) -> Table[Segment]:
        """The per-segment summary: counts, best loss and best point of each segment.

        ``sort`` is one of id (default), name, best_loss, evaluated, failed, running, ready, jobs,
        finished; ``-best_loss`` sorts descending. Segments with no best loss yet come last
        either way. ``limit``/``offset`` take one slice of that order (default: all segments).
        """
        path = f"/tasks/{int(task_id)}/segments"
        params = _params(sort=sort)
        if limit is None and not offset:
            return Table(self._pages(path, Segment, params))
        return Table(self._slice(path, Segment, params, limit, offset))

    def _slice(
        self, path: str, model: type[M], params: dict[str, Any], limit: int | None, offset: int
    ) -> list[M]:
        """``limit`` items (all when ``None``) from ``offset`` on, in pages of at most PAGE_SIZE."""
        out: list[M] = []
        while limit is None or len(out) < limit:
            n = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - len(out))
            page = self.request("GET", path, params={**params, "limit": n, "offset": offset}).json()
            items = page.get("items", [])
            out += [model.model_validate(x) for x in items]
            offset += len(items)
            if not items or offset >= int(page.get("total", 0)):
                break
        return out

    def iterations(self, task_id: int) -> Table[SteeringIteration]:
        """Steering calls, so one can see why a task waits (and what the steering said)."""
        return Table(self._pages(f"/tasks/{int(task_id)}/iterations", SteeringIteration, {}))

    def artifacts(self, task_id: int, kind: str | None = None, point: int | None = None) -> Table[Artifact]:
        kinds = [k.value for k in ArtifactKind]
        if kind is not None and str(kind) not in kinds:
            raise InvalidInput(
                0, "invalid_kind", f"artifact kind {kind!r} is not one of {', '.join(kinds)}", "kind"
            )
        kind_v = str(kind) if kind is not None else None
        return Table(
            self._pages(f"/tasks/{int(task_id)}/artifacts", Artifact, _params(kind=kind_v, point_id=point))
        )

    def _pages(self, path: str, model: type[M], params: dict[str, Any]) -> Iterator[M]:
        offset = 0
        while True:
            page = self.request("GET", path, params={**params, "limit": PAGE_SIZE, "offset": offset}).json()
            items = page.get("items", [])
            yield from (model.model_validate(x) for x in items)
            offset += len(items)
            if not items or offset >= int(page.get("total", 0)):
                return

    # --- waiting ----------------------------------------------------------------------

    def wait(
        self,
        task_id: int,
        progress: bool = True,
        poll: float = 1.0,
        timeout: float | None = None,
        console=None,
    ) -> Task:
        """Block until the task is finished, failed or cancelled and return it.

        With ``progress`` a live view shows points evaluated / running / failed and the best
        loss so far: in Jupyter a progress bar (ipywidgets, ``phpo[jupyter]``; without it an HTML
        line updated in place) and a summary when the task ends; elsewhere a rich live panel or
        one plain line per change. Raises :class:`TimeoutError` after ``timeout`` seconds (the
        task goes on).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        notebook = None
        view = None
        if progress and console is None and in_notebook():
            notebook = NotebookProgress()
        elif progress:
            view = TaskProgress(console)
            view.__enter__()
        task = None
        try:
            while True:
                task = self.task(task_id)
                if view:
                    view.update(task)
                if notebook:
                    notebook.update(task)
                if task.state in TERMINAL_TASK_STATES:
                    if notebook:
                        notebook.close(task, list(self.best(task_id)))
                    return task
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"task {task_id} is still {task.state.value} after {timeout:g} s "
                        f"({task.counts.evaluated} points evaluated)"
                    )
                time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))
        finally:
            if view:
                view.__exit__(None, None, None)

    # --- pictures ---------------------------------------------------------------------

    def plot_json(
        self, task_id: int, kind: str = "history", segment: int | str | None = None
    ) -> dict[str, Any]:
        """The server's plotly figure ``kind`` of the task as a dict (``data``, ``layout``)."""
        seg = self._segment_id(task_id, segment)
        return self.request("GET", f"/tasks/{int(task_id)}/plots/{kind}", params=_params(segment=seg)).json()

    def plot(self, task_id: int, kind: str = "history", segment: int | str | None = None):
        """A plotly ``Figure`` of the task, drawn from the server's data (no MLflow needed):
        ``kind`` is history (loss and best so far), parallel (parallel coordinates), importance
        (fANOVA parameter importance), intermediate (learning curves), pareto (multi-objective)
        or segments (best loss per segment). In Jupyter it displays itself; ``fig.write_html``
        and ``fig.write_image`` (kaleido) save it. Needs plotly: ``pip install 'phpo[plots]'``."""
        try:
            import plotly.graph_objects as go
        except ImportError:
            raise ImportError("Client.plot needs plotly: pip install 'phpo[plots]'") from None
        return go.Figure(self.plot_json(task_id, kind, segment))

    def view(self, task_id: int) -> TaskCard:
        """The task as a card for a notebook: state, progress, best point, a small history plot."""
        task = self.task(task_id)
        best = list(self.best(task_id))
        history = None
        if task.counts.evaluated:
            try:
                history = self.plot_json(task_id, "history")
            except PhpoError:
                history = None  # e.g. a server without plots: the card goes without its picture
        return TaskCard(task, best, history, self.url)

    def ui_link(self) -> str:
        """The web view's address with this client's token: opening it logs in (the page then
        drops the token from the address bar)."""
        from urllib.parse import quote

        return f"{self.url.rstrip('/')}/ui/?token={quote(self.token or '', safe='')}"

    # --- files ------------------------------------------------------------------------

    def download(
        self,
        task_id: int,
        what: str,
        dest: str | Path = ".",
        point: int | None = None,
        all_versions: bool = False,
    ) -> list[Path]:
        """Fetch the task's artifacts of kind ``what`` (checkpoint, log, metrics, meta, ...)
        into ``dest``; files of one point go under ``dest/point-<id>/``.

        Checkpoints are kept in versions as training goes on; only the newest of each point is
        fetched unless ``all_versions``.
        """
        arts = list(self.artifacts(task_id, kind=what, point=point))
        if what == ArtifactKind.checkpoint and not all_versions:
            newest: dict[int | None, Artifact] = {}
            for a in arts:
                cur = newest.get(a.point_id)
                if cur is None or (a.created_at, a.id) > (cur.created_at, cur.id):
                    newest[a.point_id] = a
            arts = list(newest.values())
        dest = Path(dest)
        out: list[Path] = []
        used: set[Path] = set()
        for a in sorted(arts, key=lambda a: a.id):
            folder = dest / f"point-{a.point_id}" if a.point_id is not None else dest
            name = Path(a.name).name or f"artifact-{a.id}"
            target = folder / name
            if target in used:
                target = folder / f"{a.id}-{name}"
            used.add(target)
            self.download_artifact(a.id, target)
            out.append(target)
        return out

    def download_artifact(self, artifact_id: int, target: str | Path) -> Path:
        """Stream one artifact to ``target`` (written under a temporary name, then renamed)."""
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        try:
            with self.stream("GET", f"/artifacts/{int(artifact_id)}") as r:
                if r.status_code >= 400:
                    r.read()
                    raise_for_answer(r)
                with open(tmp, "wb") as fh:
                    for chunk in r.iter_bytes():
                        fh.write(chunk)
        except httpx.TransportError as e:
            tmp.unlink(missing_ok=True)
            raise ServerUnreachable(f"cannot reach the phpo server at {self.url}: {e}") from e
        tmp.replace(target)
        return target

    def read_artifact(self, artifact_id: int) -> bytes:
        return self.request("GET", f"/artifacts/{int(artifact_id)}").content

    def upload_sandbox(
        self, directory: str | Path = ".", max_bytes: int = DEFAULT_MAX_BYTES, extra: Iterable[str] = ()
    ) -> str | None:
        """Upload the sandbox of ``directory`` (``*.json *.py *.sh *.yaml``, subdirectories
        included, plus the files or directories ``extra`` names; see :mod:`phpo.client.sandbox`)
        as a tar.gz and return its artifact id for ``TaskSpec.sandbox``; ``None`` when there are
        no such files."""
        data = build_sandbox(directory, max_bytes=max_bytes, extra=extra)
        return None if data is None else self.upload_tarball(data)

    def upload_tarball(self, data: bytes) -> str:
        """Upload a sandbox tar.gz (directories and regular files only); its artifact id."""
        r = self.request("PUT", "/sandboxes", content=data, headers={"Content-Type": "application/gzip"})
        try:
            return str(Artifact.model_validate(r.json()).id)
        except (ValueError, ValidationError) as e:
            raise PhpoError(
                f"the server answered the sandbox upload with something unexpected: {e}"
            ) from None


def _params(**kw: Any) -> dict[str, Any]:
    return {k: (v.value if hasattr(v, "value") else v) for k, v in kw.items() if v is not None}
