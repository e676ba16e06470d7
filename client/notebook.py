"""Jupyter: a live progress bar for :meth:`Client.wait`, a summary when it ends, and a task card.

In a notebook ``wait`` draws an ipywidgets progress bar (``pip install 'phpo[jupyter]'``); without
ipywidgets it shows one HTML line that is updated in place (a display handle), so the notebook
never stays silent and never fills with one line per poll. When the task ends a summary replaces
the bar's label: state, points evaluated / failed, the best loss and its parameters.

:class:`TaskCard` is what :meth:`Client.view` returns: its notebook representation is a compact
card (state, progress, best point and a small history of the loss with the best so far).
"""

from __future__ import annotations

import html
import time
from typing import Any

from phpo.schemas import BestPoint, Task

from .progress import budget, format_loss

_COLORS = {
    "finished": "#2e8540",
    "failed": "#c0392b",
    "cancelled": "#777",
    "running": "#1f77b4",
    "paused": "#d68910",
    "submitted": "#a0a7b0",
}


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (where a terminal progress display shows nothing)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and getattr(ip, "kernel", None) is not None


def _ipywidgets():
    try:
        import ipywidgets
    except ImportError:
        return None
    return ipywidgets


def _params_text(params: dict[str, Any] | None) -> str:
    return ", ".join(f"{k}={_short(v)}" for k, v in (params or {}).items())


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def summary(task: Task, best: list[BestPoint] | None = None, elapsed: float | None = None) -> str:
    """One paragraph on how the task ended (plain text)."""
    c = task.counts
    text = (
        f"task {task.id}{' ' + task.name if task.name else ''} {task.state.value}: {c.evaluated} of "
        f"{budget(task)} points evaluated, {c.failed} failed"
    )
    if elapsed is not None:
        text += f" in {elapsed:.0f} s"
    best = [b for b in best or [] if b.point_id is not None]
    if len(best) == 1:
        text += f"; best loss {format_loss(best[0].loss)} (point {best[0].point_id}: {_params_text(best[0].params)})"
    elif best:
        text += f"; best loss of each of {len(best)} segments: " + ", ".join(
            f"{b.segment or b.segment_id} {format_loss(b.loss)}" for b in best
        )
    elif task.best_loss is not None:
        text += f"; best loss {format_loss(task.best_loss)}"
    if task.message and task.state.value != "finished":
        text += f". {task.message}"
    return text


class NotebookProgress:
    """The notebook view of a running task; :meth:`update` with each snapshot, :meth:`close` with
    the summary. ``widgets=False`` forces the HTML-line fallback (what shows without ipywidgets)."""

    def __init__(self, widgets: bool | None = None):
        from IPython.display import HTML, display

        self._HTML = HTML
        ipw = _ipywidgets() if widgets is not False else None
        self.widgets = ipw is not None
        self.started = time.monotonic()
        if ipw is not None:
            self.bar = ipw.IntProgress(value=0, min=0, max=1, description="phpo", bar_style="info")
            self.label = ipw.HTML(value="starting…")
            display(ipw.HBox([self.bar, self.label]))
        else:
            self.handle = display(HTML(self._line("task", 0, 1, "starting…")), display_id=True)

    @staticmethod
    def _line(desc: str, done: int, total: int, detail: str) -> str:
        pct = min(100.0, 100.0 * done / max(1, total))
        return (
            f'<div class="phpo-progress" style="font-family:monospace">{html.escape(desc)} '
            f'<span style="display:inline-block;width:200px;height:10px;background:#e5e8ec;vertical-align:middle">'
            f'<span style="display:block;width:{pct:.1f}%;height:10px;background:#2e8540"></span></span> '
            f"{done}/{total} {html.escape(detail)}</div>"
        )

    def update(self, task: Task) -> None:
        c = task.counts
        done, total = c.evaluated + c.failed, max(budget(task), c.evaluated + c.failed)
        detail = (
            f"{c.leased} running, {c.failed} failed, best {format_loss(task.best_loss)}, {task.state.value}"
            + (f"; waiting for an agent: {task.waiting_for}" if task.waiting_for else "")
        )
        desc = f"task {task.id}"
        if self.widgets:
            self.bar.max, self.bar.value = total, done
            self.bar.description = desc
            self.label.value = html.escape(f"{done}/{total} {detail}")
        else:
            self.handle.update(self._HTML(self._line(desc, done, total, detail)))

    def close(self, task: Task, best: list[BestPoint] | None = None) -> str:
        text = summary(task, best, time.monotonic() - self.started)
        ok = task.state.value == "finished"
        if self.widgets:
            self.bar.bar_style = "success" if ok else "danger"
            self.label.value = f'<b class="phpo-summary">{html.escape(text)}</b>'
        else:
            c = task.counts
            self.handle.update(
                self._HTML(
                    self._line(
                        f"task {task.id}",
                        c.evaluated + c.failed,
                        max(budget(task), c.evaluated + c.failed),
                        task.state.value,
                    )
                    + f'<div class="phpo-summary"><b>{html.escape(text)}</b></div>'
                )
            )
        return text


def sparkline(losses: list[float], best: list[float], width: int = 240, height: int = 60) -> str:
    """An inline SVG of the loss of each point (dots) and the best so far (a line): the card's
    small history plot, drawn from the server's history figure data."""
    vals = [v for v in losses + best if isinstance(v, (int, float))]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    span = (hi - lo) or 1.0
    n = max(1, len(losses) - 1)

    def xy(i: int, v: float) -> tuple[float, float]:
        return 4 + (width - 8) * i / n, height - 4 - (height - 8) * (v - lo) / span

    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="#6c8ebf"/>'
        for x, y in (xy(i, v) for i, v in enumerate(losses))
    )
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(i, v) for i, v in enumerate(best)))
    return (
        f'<svg class="phpo-history" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'data-points="{len(losses)}"><rect width="{width}" height="{height}" fill="#f6f7f9"/>{dots}'
        f'<polyline points="{line}" fill="none" stroke="#c0392b" stroke-width="1.5"/></svg>'
    )


class TaskCard:
    """A task as a compact card in a notebook (``_repr_html_``); ``repr`` is one summary line."""

    def __init__(
        self, task: Task, best: list[BestPoint], history: dict[str, Any] | None = None, url: str | None = None
    ):
        self.task, self.best, self.history, self.url = task, best, history, url

    def __repr__(self) -> str:
        return summary(self.task, self.best)

    def _repr_html_(self) -> str:
        t, c = self.task, self.task.counts
        esc = html.escape
        total = budget(t)
        pct = min(100.0, 100.0 * (c.evaluated + c.failed) / total)
        color = _COLORS.get(t.state.value, "#777")
        best = [b for b in self.best if b.point_id is not None]
        if len(best) == 1:
            best_html = (
                f"best loss <b>{esc(format_loss(best[0].loss))}</b> (point {best[0].point_id})<br>"
                f"<code>{esc(_params_text(best[0].params))}</code>"
            )
        elif best:
            best_html = f"{len(best)} of {len(self.best)} segments have a best point"
        else:
            best_html = "no evaluated point yet"
        plot = ""
        if self.history:
            data = self.history.get("data", [])
            losses = list(data[0].get("y") or []) if data else []
            so_far = list(data[1].get("y") or []) if len(data) > 1 else []
            plot = sparkline(losses, so_far)
        link = (
            f'<div><a href="{esc(self.url)}/ui/#/task/{t.id}" target="_blank">open in the phpo web view</a></div>'
            if self.url
            else ""
        )
        return (
            f'<div class="phpo-card" style="border:1px solid #d9dee4;padding:8px 12px;display:inline-block;'
            f'font-family:sans-serif;font-size:13px">'
            f"<div><b>task {t.id}{' ' + esc(t.name) if t.name else ''}</b> "
            f'<span class="phpo-state" style="background:{color};color:#fff;padding:0 6px;border-radius:3px">'
            f"{esc(t.state.value)}</span></div>"
            f'<div class="phpo-progress">{c.evaluated}/{total} evaluated, {c.leased} running, {c.failed} failed '
            f'<span style="display:inline-block;width:160px;height:8px;background:#e5e8ec;vertical-align:middle">'
            f'<span style="display:block;width:{pct:.1f}%;height:8px;background:#2e8540"></span></span></div>'
            f'<div class="phpo-best">{best_html}</div>{plot}{link}</div>'
        )
