"""Plots of a task from the server's own data, drawn by Optuna's visualization module (plotly).

The task's stored points become the trials of an in-memory Optuna study (parameters, loss or
losses, intermediate values, failed points as failed trials, points still running as running
trials), so the figures are Optuna's own: optimisation history with the best value so far,
parallel coordinates, parameter importance (Optuna's fANOVA evaluator) and learning curves
(intermediate values); multi-objective tasks get the Pareto front. Segmented tasks also get one
bar per segment with its best loss. No MLflow is needed.

Each figure is returned as a plotly ``Figure``; the API sends ``fig.to_json()`` and the client
rebuilds it with ``plotly.io.from_json``, so the web view, ``phpo plot`` and Jupyter draw the
same figure.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

from phpo.schemas.points import Point
from phpo.schemas.search_space import FloatParam, IntParam, SearchSpace
from phpo.schemas.segments import Segment
from phpo.schemas.tasks import Task

KINDS: dict[str, str] = {
    "history": "loss of each evaluated point in evaluation order, with the best loss so far",
    "parallel": "parallel coordinates: every parameter of each evaluated point, coloured by loss",
    "importance": "parameter importance (Optuna's fANOVA evaluator) for the loss",
    "intermediate": "learning curves: the intermediate values each point reported",
    "pareto": "the Pareto front of a multi-objective task",
    "segments": "the best loss of each segment of a segmented task",
}
MAX_PLOT_POINTS = 20_000
"""Points a figure is drawn from at most (the earliest evaluated); the title says when cut."""


class NotEnoughData(ValueError):
    """The task has too few points (or not the right kind of data) for this plot yet."""


class WrongKind(ValueError):
    """This plot does not apply to this task (e.g. a Pareto front of a single-objective task)."""


DRAW_LOCK = threading.Lock()
"""Held while a figure is built and serialized (see :func:`draw_json`)."""


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def draw_json(*args: Any, **kw: Any) -> str:
    """:func:`figure` as plotly JSON, one figure at a time.

    The web view asks for its four plots at once, so the first requests of a fresh server run in
    four threads, and plotly imports modules (narwhals) lazily while it validates and serializes:
    from several threads at once that deadlocks in importlib (``_DeadlockError``, a 500). Building
    a figure is pure Python under the GIL anyway, so drawing them one after another costs little.
    """
    with DRAW_LOCK:
        return figure(*args, **kw).to_json()


def _distribution(name: str, values: list[Any], declared: Any) -> Any:
    """The Optuna distribution of one parameter: the declared range where the search space has
    one (log scale as declared), widened to every stored value; else the values seen."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if values and len(nums) == len(values):
        lo, hi = min(nums), max(nums)
        log = False
        if isinstance(declared, (FloatParam, IntParam)):
            lo, hi = min(lo, declared.low), max(hi, declared.high)
            log = declared.log and lo > 0
        if all(isinstance(v, int) for v in nums) and not isinstance(declared, FloatParam):
            return IntDistribution(int(lo), int(hi), log=log)
        return FloatDistribution(float(lo), float(hi), log=log)
    return CategoricalDistribution(sorted({_categorical(v) for v in values}, key=str))


def _categorical(v: Any) -> Any:
    """A value Optuna can hold as a categorical choice: None, bool, int, float or str."""
    return v if v is None or isinstance(v, (bool, int, float, str)) else str(v)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _order(points: Sequence[Point]) -> list[Point]:
    """Evaluation order: evaluated/failed points by when they ended, then the others by id."""
    far = float("inf")
    return sorted(points, key=lambda p: (p.evaluated_at.timestamp() if p.evaluated_at else far, p.id))


def build_study(task: Task, points: Sequence[Point], space: SearchSpace | None = None):
    """An in-memory Optuna study whose trials are ``points`` in evaluation order.

    Evaluated points are complete trials (their loss the value, a list of losses the values of a
    multi-objective task), failed ones failed trials, ready and running ones running trials (so
    their learning curves show). Each trial's user attributes hold the point id and serial.
    """
    optuna = _optuna()
    from optuna.trial import TrialState, create_trial

    directions = list(task.spec.directions or ["minimize"])
    declared = space.params if space is not None else {}
    seen: dict[str, list[Any]] = {}
    for p in points:
        for k, v in p.params.items():
            seen.setdefault(k, []).append(_categorical(v) if not _finite(v) else v)
    dists = {k: _distribution(k, vals, declared.get(k)) for k, vals in seen.items()}
    study = optuna.create_study(directions=directions)
    for p in _order(points):
        params = {k: (v if _finite(v) else _categorical(v)) for k, v in p.params.items()}
        inter = {int(x.step): float(x.value) for x in p.intermediate if x.value is not None}
        attrs = {"point_id": p.id, "serial": p.serial, "segment": p.segment}
        kw: dict[str, Any] = {
            "params": params,
            "distributions": {k: dists[k] for k in params},
            "intermediate_values": inter,
            "user_attrs": attrs,
        }
        losses = p.loss if isinstance(p.loss, list) else [p.loss]
        if p.state.value == "evaluated" and len(losses) == len(directions) and all(map(_finite, losses)):
            trial = create_trial(state=TrialState.COMPLETE, values=[float(x) for x in losses], **kw)
        elif p.state.value in ("ready", "leased"):
            trial = create_trial(state=TrialState.RUNNING, **kw)
        elif p.state.value == "failed":
            trial = create_trial(state=TrialState.FAIL, **kw)
        else:
            continue  # cancelled: never ran
        study.add_trial(trial)
    return study


def _complete(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def _need(study, n: int, kind: str) -> None:
    got = len(_complete(study))
    if got < n:
        raise NotEnoughData(
            f"the {kind} plot needs at least {n} evaluated point{'s' * (n > 1)}; the task has {got} so far"
        )


def _segment_of(task: Task, segment: int | None) -> tuple[int | None, str]:
    if task.n_segments <= 1:
        return None, ""
    idx = 0 if segment is None else segment
    names = [s.name for s in task.spec.segments or []]
    return idx, (names[idx] if idx < len(names) else str(idx))


def segment_to_plot(task: Task, segment: int | None) -> int | None:
    """The segment a per-point plot of a segmented task draws: the one asked for, else the first
    (segments may have search spaces of their own, so their points are not one study)."""
    return _segment_of(task, segment)[0]


def figure(
    kind: str,
    task: Task,
    points: Sequence[Point],
    segments: Sequence[Segment] = (),
    segment: int | None = None,
    truncated: bool = False,
):
    """The plotly figure ``kind`` (one of :data:`KINDS`) of ``task``.

    ``points`` are the points of the segment drawn (see :func:`segment_to_plot`); ``segments``
    the task's segment summary (for kind ``segments``). Raises :class:`WrongKind` or
    :class:`NotEnoughData` with a message for the user.
    """
    if kind not in KINDS:
        raise WrongKind(f"unknown plot kind '{kind}'; kinds: {', '.join(KINDS)}")
    if kind == "segments":
        return _segments_figure(task, segments)
    idx, seg_name = _segment_of(task, segment)
    spaces = _spaces(task)
    space = spaces[idx or 0] if spaces and (idx or 0) < len(spaces) else None
    directions = list(task.spec.directions or ["minimize"])
    multi = len(directions) > 1
    target = (lambda t: t.values[0]) if multi else None
    target_name = "loss[0]" if multi else "loss"
    try:
        fig = _draw(kind, build_study(task, points, space), directions, target, target_name)
    except ValueError as e:  # Optuna's refusal of data it cannot draw (e.g. conditional parameters)
        if isinstance(e, (NotEnoughData, WrongKind)):
            raise
        raise NotEnoughData(f"Optuna cannot draw the {kind} plot from this task's points: {e}") from None
    title = (
        f"task {task.id}"
        + (f" {task.name}" if task.name else "")
        + (f", segment {seg_name}" if seg_name else "")
    )
    old = fig.layout.title.text or KINDS[kind]
    cut = f" (first {MAX_PLOT_POINTS} points)" if truncated else ""
    fig.update_layout(title_text=f"{old}: {title}{cut}", meta={"phpo_kind": kind, "task_id": task.id})
    return fig


def _draw(kind: str, study, directions: list[str], target, target_name: str):
    from optuna import visualization as vis

    multi = len(directions) > 1
    if kind == "history":
        _need(study, 1, kind)
        fig = vis.plot_optimization_history(study, target=target, target_name=target_name)
        fig.update_xaxes(title_text="point (in evaluation order)")
    elif kind == "parallel":
        _need(study, 1, kind)
        fig = vis.plot_parallel_coordinate(study, target=target, target_name=target_name)
    elif kind == "importance":
        _need(study, 2, kind)
        varying = [k for k, d in _distributions(study).items() if not d.single()]
        if not varying:
            raise NotEnoughData(
                "the importance plot needs a parameter that takes more than one value "
                "among the evaluated points"
            )
        from optuna.importance import FanovaImportanceEvaluator

        fig = vis.plot_param_importances(
            study,
            evaluator=FanovaImportanceEvaluator(seed=0),
            params=varying,
            target=target,
            target_name=target_name,
        )
    elif kind == "intermediate":
        if not any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
            raise NotEnoughData(
                "the intermediate plot needs points that reported intermediate values "
                "(sdk.report_intermediate); this task has none"
            )
        fig = vis.plot_intermediate_values(study)
        fig.update_xaxes(title_text="step")
        fig.update_yaxes(title_text="intermediate value")
    else:  # pareto
        if not multi:
            raise WrongKind(
                "the pareto plot is for multi-objective tasks (directions with two or more "
                "objectives); this task has one objective"
            )
        if len(directions) > 3:
            raise WrongKind(f"the pareto plot draws two or three objectives; this task has {len(directions)}")
        _need(study, 1, kind)
        fig = vis.plot_pareto_front(
            study, target_names=[f"loss[{i}] ({d})" for i, d in enumerate(directions)]
        )
        if len(directions) == 2:
            _name_fronts(fig, study)
    return fig


def _name_fronts(fig, study) -> None:
    """Name the Pareto plot's traces (Optuna leaves them unnamed): the front, and the others."""
    front = {tuple(round(v, 12) for v in t.values[:2]) for t in study.best_trials}
    for d in fig.data:
        if d.x is None or d.y is None or not len(d.x):
            continue
        on = all((round(x, 12), round(y, 12)) in front for x, y in zip(d.x, d.y, strict=False))
        d.name = "Pareto front" if on else "dominated points"
        d.showlegend = True


def _spaces(task: Task) -> list[SearchSpace | None]:
    try:
        return task.spec.segment_spaces()
    except Exception:  # noqa: BLE001 - an external steering's space need not parse; ranges come from the data
        return []


def _distributions(study) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for t in _complete(study):
        out.update(t.distributions)
    return out


def _segments_figure(task: Task, segments: Sequence[Segment]):
    import plotly.graph_objects as go

    if task.n_segments <= 1:
        raise WrongKind(
            "the segments plot is for segmented tasks (segmentSpecFile); this task has one segment"
        )
    rows = [(g.name, g.best_loss[0] if isinstance(g.best_loss, list) else g.best_loss, g) for g in segments]
    have = [r for r in rows if _finite(r[1])]
    if not have:
        raise NotEnoughData("the segments plot needs a segment with an evaluated point; none has one yet")
    fig = go.Figure(
        go.Bar(
            x=[r[0] for r in have],
            y=[r[1] for r in have],
            customdata=[[r[2].id, r[2].n_evaluated, r[2].n_failed] for r in have],
            hovertemplate="segment %{x} (id %{customdata[0]})<br>best loss %{y:.4g}"
            "<br>%{customdata[1]} evaluated, %{customdata[2]} failed<extra></extra>",
        )
    )
    fig.update_layout(
        title_text=f"Best loss per segment: task {task.id}" + (f" {task.name}" if task.name else ""),
        xaxis_title="segment",
        yaxis_title="best loss",
        meta={"phpo_kind": "segments", "task_id": task.id},
    )
    return fig
