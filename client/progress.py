"""Live progress of a task: points evaluated / running / failed and the best loss so far.

On a terminal (or in Jupyter) this is a rich live panel redrawn every poll; anywhere else (a
log file, CI, a pipe) it prints one plain line each time something changes, so logs stay
readable and nothing is lost when the output is not a terminal.
"""

from __future__ import annotations

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from phpo.schemas import Task


def budget(task: Task) -> int:
    """Points the whole search may evaluate: maxPoints per segment."""
    return max(1, task.spec.maxPoints * max(1, task.n_segments))


def format_loss(loss: float | list[float] | None) -> str:
    if loss is None:
        return "–"
    if isinstance(loss, list):
        return "[" + ", ".join(f"{x:.4g}" for x in loss) + "]"
    return f"{loss:.4g}"


def summary_line(task: Task) -> str:
    c = task.counts
    return (
        f"task {task.id} {task.state.value}: {c.evaluated}/{budget(task)} evaluated, "
        f"{c.leased} running, {c.failed} failed, {c.ready} waiting; best loss {format_loss(task.best_loss)}"
        + (f"; waiting for an agent: {task.waiting_for}" if task.waiting_for else "")
    )


class TaskProgress:
    """Draws successive snapshots of one task. Use as a context manager; call :meth:`update`."""

    def __init__(self, console: Console | None = None, *, live: bool | None = None):
        self.console = console or Console(stderr=True)
        self.live_mode = (self.console.is_terminal or self.console.is_jupyter) if live is None else live
        self._last_line: str | None = None
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=self.console,
        )
        self._bar = None
        self._live: Live | None = None

    def __enter__(self) -> TaskProgress:
        if self.live_mode:
            self._live = Live(self._progress, console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    def update(self, task: Task) -> None:
        if not self.live_mode:
            line = summary_line(task)
            if line != self._last_line:
                self.console.print(line, highlight=False, soft_wrap=True)
                self._last_line = line
            return
        c = task.counts
        detail = (
            f"[cyan]{c.leased} running[/] [red]{c.failed} failed[/] "
            f"best [green]{format_loss(task.best_loss)}[/] [dim]{task.state.value}[/]"
            + (f" [yellow]waiting for an agent: {task.waiting_for}[/]" if task.waiting_for else "")
        )
        desc = f"task {task.id}" + (f" {task.name}" if task.name else "")
        done = c.evaluated + c.failed
        if self._bar is None:
            self._bar = self._progress.add_task(desc, total=budget(task), completed=done, detail=detail)
        else:
            self._progress.update(self._bar, total=max(budget(task), done), completed=done, detail=detail)
        if self._live is not None:
            self._live.update(Group(self._progress))
