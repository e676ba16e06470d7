"""The task commands: submit, list, show, segments, best, kill, pause, resume, logs, wait.

Each takes the parsed arguments and a :class:`~phpo.client.Client` and returns the exit code.
Human output goes to stdout as rich tables; ``--json`` prints plain JSON instead (nothing else
on stdout), so every command can be scripted. Progress and hints go to stderr.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from phpo.schemas import BestPoint, Point, Segment, Task, TaskState
from phpo.schemas.states import task_succeeded

from ..errors import AuthError, ConfigError, InvalidInput, NotFound, PhpoError, ServerUnreachable
from ..progress import format_loss, summary_line
from ..sandbox import check_size, pack, plan_sandbox
from .upstream import CliError, build_spec, collect_options, dump_options, submission_notes, write_dump

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 3
EXIT_NOTHING, EXIT_UNREACHABLE, EXIT_REFUSED, EXIT_SERVER = 4, 5, 6, 7
EXIT_PIPE = 141  # the reader went away (`phpo logs 7 | head`), as a shell reports SIGPIPE

EXIT_CODES_HELP = """\
exit codes (wait, show, best, logs, points and the other task commands):
  0  success (wait: the task finished with evaluated points)
  1  the task failed or was cancelled (show/best still print what there is)
  2  usage error: a wrong option or value (also a value the server refused, HTTP 400/422)
  3  wait --timeout passed before the task ended (the task goes on)
  4  nothing to show: no such task or point (HTTP 404), no evaluated point yet, no logs yet
  5  the server is unreachable, or none is configured
  6  refused: the token is missing, wrong or lacks the role (HTTP 401/403)
  7  any other error answer of the server (e.g. 409: the task is already cancelled; 5xx)
  submit exits 1 for every failure to submit (as upstream phpo), 2 for usage errors."""


def exit_code_for(e: PhpoError) -> int:
    """The exit code of a command that ended with ``e`` (see :data:`EXIT_CODES_HELP`), so a
    script can tell a wrong token from a dead server from a missing task."""
    if isinstance(e, (ServerUnreachable, ConfigError)):
        return EXIT_UNREACHABLE
    if isinstance(e, AuthError):
        return EXIT_REFUSED
    if isinstance(e, NotFound):
        return EXIT_NOTHING
    if isinstance(e, InvalidInput):
        return EXIT_USAGE
    return EXIT_SERVER


def task_exit(task: Task) -> int:
    """0 for a task that is running, paused or finished with evaluated points; 1 for one that
    failed or was cancelled (or finished without any evaluated point)."""
    if task.state in (TaskState.failed, TaskState.cancelled):
        return EXIT_FAILED
    if task.state == TaskState.finished and not task_succeeded(task.state, task.counts.evaluated):
        return EXIT_FAILED
    return EXIT_OK


SHOW_SEGMENTS = 20  # `phpo show` lists at most this many segments; `phpo segments` lists them all


def out_console() -> Console:
    """stdout; when it is not a terminal (a pipe, a file) tables get a generous width instead of
    rich's 80 columns, so ids and names are not cut."""
    con = Console(soft_wrap=True, highlight=False)
    if not con.is_terminal and not os.environ.get("COLUMNS"):
        con = Console(soft_wrap=True, highlight=False, width=160)
    return con


def err_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


def task_json(task: Task) -> dict[str, Any]:
    return task.model_dump(mode="json")


# --- submit ------------------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace, make_client) -> int:
    err = err_console()
    options = collect_options(args)
    dump_path = options.get("dumpJson")
    try:
        spec = build_spec(options, warn=lambda m: err.print(f"[yellow]warning:[/] {m}"))
        for note in submission_notes(spec, options):
            err.print(note, markup=False, highlight=False)
        plan = plan_sandbox(os.getcwd(), _sandbox_files(options.get("sandboxFiles")))
        if options.get("noSubmit"):
            check_size(plan)  # the size cap is checked even when nothing is sent
            print_json(spec.model_dump(mode="json", exclude_unset=True))
            err.print(escape(plan.summary()), style="dim")
            err.print("--noSubmit: the task is valid; nothing was submitted")
            if dump_path:
                write_dump(
                    dump_path,
                    dump_options(
                        options, return_code=0, return_out="not submitted (--noSubmit)", task_id=None
                    ),
                )
            return EXIT_OK
        tarball = pack(plan)
        with make_client() as client:
            sandbox = client.upload_tarball(tarball) if tarball is not None else None
            task = client.submit(
                spec, directory=None, **({"sandbox": sandbox} if sandbox is not None else {})
            )
        err.print(escape(plan.summary()), style="dim")
    except (CliError, PhpoError) as e:
        if dump_path:
            write_dump(
                dump_path,
                dump_options(
                    options,
                    return_code=e.code if isinstance(e, CliError) else 1,
                    return_out=str(e),
                    task_id=None,
                ),
            )
        raise
    message = f"submitted task {task.id}" + (f" '{task.name}'" if task.name else "")
    if dump_path:
        write_dump(dump_path, dump_options(options, return_code=0, return_out=message, task_id=task.id))
    if args.json:
        print_json(task_json(task))
    else:
        out_console().print(message)
        err.print(f"follow it with: phpo wait {task.id}   (or phpo show {task.id})", style="dim")
    return EXIT_OK


def _sandbox_files(value: str | list[str] | None) -> list[str]:
    """``--sandboxFiles a.txt,model/`` (or a list in the --loadJson file)."""
    if not value:
        return []
    items = value if isinstance(value, list) else str(value).split(",")
    return [str(x).strip() for x in items if str(x).strip()]


# --- list / show -------------------------------------------------------------------------


def _tasks_table(tasks: list[Task]) -> RichTable:
    t = RichTable(title=None, header_style="bold")
    for col in ("id", "name", "state", "evaluated", "running", "failed", "best loss", "optimizer", "created"):
        t.add_column(col, justify="right" if col in ("id", "evaluated", "running", "failed") else "left")
    for task in tasks:
        c = task.counts
        t.add_row(
            str(task.id),
            task.name or "",
            _state(task.state),
            f"{c.evaluated}/{task.spec.maxPoints * task.n_segments}",
            str(c.leased),
            str(c.failed),
            format_loss(task.best_loss),
            task.spec.optimizer_name,
            task.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    return t


def _state(state: TaskState) -> str:
    color = {
        "finished": "green",
        "failed": "red",
        "cancelled": "yellow",
        "running": "cyan",
        "paused": "magenta",
    }.get(state.value, "white")
    return f"[{color}]{state.value}[/]"


def cmd_list(args: argparse.Namespace, make_client) -> int:
    with make_client() as client:
        tasks = client.tasks(state=args.state, name=args.name, limit=args.limit)
    if args.json:
        print_json([task_json(t) for t in tasks])
        return EXIT_OK
    if not tasks:
        err_console().print("no tasks" + (" matching" if args.state or args.name else " yet"))
        return EXIT_OK
    out_console().print(_tasks_table(tasks))
    return EXIT_OK


def _points_table(points: list[Point], limit: int) -> RichTable:
    names: dict[str, None] = {}
    for p in points:
        names.update(dict.fromkeys(p.params))
    t = RichTable(header_style="bold")
    for col in ("point", "segment", "state", "loss", *names, "attempts", "error"):
        t.add_column(col)
    for p in points[:limit]:
        t.add_row(
            str(p.id),
            p.segment or str(p.segment_id),
            p.state.value,
            format_loss(p.loss),
            *[_val(p.params.get(n)) for n in names],
            str(p.attempts),
            (p.error or "")[:60],
        )
    return t


def _val(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def n_points(task: Task) -> int:
    c = task.counts
    return c.ready + c.leased + c.evaluated + c.failed + c.cancelled + c.pruned


def _failed_note(task: Task) -> None:
    """On stderr, why the exit code is 1 while the output still shows the task's points."""
    if task_exit(task) == EXIT_FAILED:
        err_console().print(
            f"[red]task {task.id} {task.state.value}[/]"
            + (f": {escape(task.message)}" if task.message else "")
        )


def cmd_show(args: argparse.Namespace, make_client) -> int:
    if args.points < 0 or args.offset < 0:
        raise CliError(f"--points and --offset must be 0 or more, got {args.points} and {args.offset}")
    with make_client() as client:
        task = client.task(args.id)
        # best first (points without a loss last), one page of them: a task may hold millions
        points = (
            list(client.points(args.id, sort="loss", limit=args.points, offset=args.offset))
            if args.points
            else []
        )
        if args.json:
            out = task_json(task)
            out["points"] = [p.model_dump(mode="json") for p in points]
            out["points_page"] = {
                "sort": "loss",
                "limit": args.points,
                "offset": args.offset,
                "total": n_points(task),
            }
            print_json(out)
            return task_exit(task)
        best = list(client.best(args.id))
        segments = list(client.segments(args.id, limit=SHOW_SEGMENTS)) if task.n_segments > 1 else []
    con = out_console()
    s = task.spec
    c = task.counts
    lines = [
        f"[bold]task {task.id}[/] {task.name or ''}  {_state(task.state)}",
        f"owner {task.owner}; created {task.created_at:%Y-%m-%d %H:%M:%S}; updated {task.updated_at:%H:%M:%S}"
        + (f"; finished {task.finished_at:%H:%M:%S}" if task.finished_at else ""),
        f"optimizer {s.optimizer_name}; {s.maxPoints} points x {task.n_segments} segment(s), "
        f"{s.nParallelEvaluation} in parallel; evaluationExec: {s.evaluationExec}",
        f"points: {c.evaluated} evaluated, {c.leased} running, {c.ready} waiting, {c.failed} failed, "
        f"{c.cancelled} cancelled"
        + (f", {c.pruned} pruned" if c.pruned or s.pruner != "none" else "")
        + f"; {c.jobs} jobs",
    ]
    if task.message:
        lines.append(f"message: {task.message}")
    if task.waiting_for:
        lines.append(f"[yellow]waiting for an agent:[/] {escape(task.waiting_for)}")
    for line in lines:
        con.print(line)
    if segments:
        con.print(_segments_table(segments, title="segments"))
        if task.n_segments > len(segments):
            con.print(
                f"… {task.n_segments - len(segments)} more segments: phpo segments {task.id} "
                "(--sort best_loss, --csv, ...)",
                style="dim",
            )
    for b in best if not segments else []:  # a segmented task's best points are in its table
        if b.loss is not None:
            seg = f" ({escape(b.segment)})" if b.segment else ""
            params = escape(json.dumps(b.params))
            con.print(f"best{seg}: loss {format_loss(b.loss)} at point {b.point_id}: {params}")
    if points:
        con.print(_points_table(points, args.points))
        shown_to = args.offset + len(points)
        if shown_to < n_points(task):
            con.print(
                f"… points {args.offset + 1}-{shown_to} of {n_points(task)}, best first (next: phpo show "
                f"{task.id} --offset {shown_to}; all of them: phpo points {task.id} --csv)",
                style="dim",
            )
    return task_exit(task)


# --- points ------------------------------------------------------------------------------


POINT_CSV_COLUMNS = (
    "point",
    "segment",
    "serial",
    "state",
    "loss",
    "attempts",
    "site",
    "evaluated_at",
    "error",
)


def _points_csv(points: list[Point]) -> str:
    """CSV: one row per point; the summary columns, one column per parameter, one per metric."""
    params: dict[str, None] = {}
    metrics: dict[str, None] = {}
    for p in points:
        params.update(dict.fromkeys(p.params))
        metrics.update(dict.fromkeys(p.metrics or {}))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([*POINT_CSV_COLUMNS, *params, *(f"metric.{m}" for m in metrics)])
    for p in points:
        loss = json.dumps(p.loss) if isinstance(p.loss, list) else ("" if p.loss is None else p.loss)
        row = [
            p.id,
            p.segment,
            p.serial,
            p.state.value,
            loss,
            p.attempts,
            p.site or "",
            p.evaluated_at.isoformat() if p.evaluated_at else "",
            p.error or "",
        ]
        row += [_cell(p.params.get(n)) for n in params]
        row += [_cell((p.metrics or {}).get(m)) for m in metrics]
        w.writerow(row)
    return buf.getvalue()


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return v


def cmd_points(args: argparse.Namespace, make_client) -> int:
    if args.json and args.csv:
        raise CliError("--json and --csv exclude each other; choose one")
    with make_client() as client:
        task = client.task(args.id)
        try:
            points = list(client.points(args.id, segment=args.segment, state=args.state, sort=args.sort))
        except InvalidInput as e:
            if e.field in ("sort", "state", "segment"):
                raise CliError(f"--{e.field}: {e.message}") from None
            raise
    if args.json:
        print_json([p.model_dump(mode="json") for p in points])
    elif args.csv:
        sys.stdout.write(_points_csv(points))
        sys.stdout.flush()
    elif points:
        out_console().print(_points_table(points, len(points)))
    if not points:
        err_console().print(
            f"task {task.id} has no points" + (" matching" if args.state or args.segment else " yet")
        )
        return EXIT_NOTHING if task_exit(task) == EXIT_OK else EXIT_FAILED
    return task_exit(task)


# --- segments ----------------------------------------------------------------------------


def _param_names(segments: list[Segment]) -> list[str]:
    names: dict[str, None] = {}
    for g in segments:
        names.update(dict.fromkeys(g.best_params or {}))
    return list(names)


def _segments_table(segments: list[Segment], title: str | None = None) -> RichTable:
    """One row per segment: counts, best loss and the best point's parameters (a ``pruned``
    column only where a segment has pruned points: the table stays as narrow as it was)."""
    names = _param_names(segments)
    pruned = any(g.n_pruned for g in segments)
    t = RichTable(title=title, header_style="bold")
    counts = ("id", "evaluated", "running", "failed", "pruned")
    for col in (
        "id",
        "name",
        "evaluated",
        "running",
        "failed",
        *(("pruned",) if pruned else ()),
        "best loss",
        *names,
        "finished",
    ):
        t.add_column(col, justify="right" if col in counts else "left")
    for g in segments:
        params = g.best_params or {}
        t.add_row(
            str(g.id),
            escape(g.name),
            str(g.n_evaluated),
            str(g.n_leased),
            str(g.n_failed),
            *((str(g.n_pruned),) if pruned else ()),
            format_loss(g.best_loss),
            *[escape(_val(params.get(n))) for n in names],
            "yes" if g.finished else "",
        )
    return t


SEGMENT_CSV_COLUMNS = (
    "id",
    "name",
    "evaluated",
    "running",
    "failed",
    "ready",
    "jobs",
    "best_loss",
    "finished",
    "pruned",
)


def _segments_csv(segments: list[Segment]) -> str:
    """CSV: the summary columns, then one column per parameter of the best points."""
    names = _param_names(segments)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([*SEGMENT_CSV_COLUMNS, *names])
    for g in segments:
        loss = g.best_loss if not isinstance(g.best_loss, list) else json.dumps(g.best_loss)
        loss = "" if loss is None else loss
        params = g.best_params or {}
        w.writerow(
            [
                g.id,
                g.name,
                g.n_evaluated,
                g.n_leased,
                g.n_failed,
                g.n_ready,
                g.n_jobs,
                loss,
                "true" if g.finished else "false",
                g.n_pruned,
            ]
            + [params.get(n, "") for n in names]
        )
    return buf.getvalue()


def cmd_segments(args: argparse.Namespace, make_client) -> int:
    if args.json and args.csv:
        raise CliError("--json and --csv exclude each other; choose one")
    if args.limit is not None and args.limit < 1:
        raise CliError(f"--limit must be 1 or more, got {args.limit}")
    if args.offset < 0:
        raise CliError(f"--offset must be 0 or more, got {args.offset}")
    with make_client() as client:
        task = client.task(args.id)
        try:
            segments = list(client.segments(args.id, sort=args.sort, limit=args.limit, offset=args.offset))
        except InvalidInput as e:
            if e.field == "sort":  # a typo in --sort is a usage error, with the server's list of keys
                raise CliError(f"--sort: {e.message}") from None
            raise
    if args.json:
        print_json([g.model_dump(mode="json") for g in segments])
        return EXIT_OK
    if args.csv:
        sys.stdout.write(_segments_csv(segments))
        sys.stdout.flush()
        return EXIT_OK
    if not segments:
        err_console().print(f"no segments from offset {args.offset}; task {task.id} has {task.n_segments}")
        return EXIT_OK
    title = f"segments of task {task.id}" + (f", sorted by {escape(args.sort)}" if args.sort else "")
    out_console().print(_segments_table(segments, title=title))
    shown_to = args.offset + len(segments)
    if args.offset or shown_to < task.n_segments:
        err_console().print(
            f"segments {args.offset + 1}-{shown_to} of {task.n_segments}"
            + (f"; next: --offset {shown_to}" if shown_to < task.n_segments else ""),
            style="dim",
        )
    return EXIT_OK


# --- best --------------------------------------------------------------------------------


def _best_json(b: BestPoint, with_segment: bool) -> dict[str, Any]:
    d: dict[str, Any] = {"loss": b.loss, "params": b.params}
    if b.pareto:
        d["pareto"] = [{"loss": p.loss, "params": p.params} for p in b.pareto]
    if with_segment:
        d = {"segment": b.segment, "segment_id": b.segment_id, **d}
    return d


def cmd_best(args: argparse.Namespace, make_client) -> int:
    """Exit 0 with a best point, 4 when no point is evaluated yet, 1 when the task failed or was
    cancelled (what it has is still printed)."""
    if getattr(args, "model", False):
        return _best_models(args, make_client)
    with make_client() as client:
        task = client.task(args.id)
        best = list(client.best(args.id))
    rc = task_exit(task)
    if rc == EXIT_OK and all(b.loss is None for b in best):
        rc = EXIT_NOTHING
    _failed_note(task)
    if len(best) > 1 and not args.segments:
        raise CliError(
            f"task {args.id} has {len(best)} segments, each with its own best point: "
            f"use phpo best {args.id} --segments",
            code=EXIT_USAGE,
        )
    if not best:
        best = [BestPoint()]
    if args.json:
        print_json([_best_json(b, True) for b in best] if args.segments else _best_json(best[0], False))
        return rc
    if args.csv:
        names: dict[str, None] = {}
        for b in best:
            names.update(dict.fromkeys(b.params or {}))
        buf = io.StringIO()
        w = csv.writer(buf)
        head = (["segment"] if args.segments else []) + ["point", "loss", *names]
        w.writerow(head)
        for b in best:
            loss = json.dumps(b.loss) if isinstance(b.loss, list) else ("" if b.loss is None else b.loss)
            row = ([b.segment] if args.segments else []) + [
                b.point_id if b.point_id is not None else "",
                loss,
            ]
            w.writerow(row + [(b.params or {}).get(n, "") for n in names])
        sys.stdout.write(buf.getvalue())
        return rc
    con = out_console()
    for b in best:
        seg = f"segment {b.segment or b.segment_id}: " if args.segments else ""
        if b.loss is None:
            con.print(
                f"{seg}no evaluated point" + (" yet" if task.state.value in ("running", "paused") else "")
            )
            continue
        con.print(f"{seg}loss {format_loss(b.loss)} (point {b.point_id})")
        for k, v in (b.params or {}).items():
            con.print(f"  {k} = {_val(v)}")
    return rc


def _best_models(args: argparse.Namespace, make_client) -> int:
    """``phpo best ID --model``: exit 0 when every model asked for is registered, 4 while one is
    pending, 1 when the task failed or a segment has no model (its payload saved none)."""
    with make_client() as client:
        task = client.task(args.id)
        models = list(client.models(args.id))
    if len(models) > 1 and not args.segments:
        raise CliError(
            f"task {args.id} has {len(models)} segments, each with its own model: "
            f"use phpo best {args.id} --model --segments",
            code=EXIT_USAGE,
        )
    rc = task_exit(task)
    if rc == EXIT_OK and any(m.status == "pending" for m in models):
        rc = EXIT_NOTHING
    if rc == EXIT_OK and any(m.status in ("no_model", "error") for m in models):
        rc = EXIT_FAILED
    if args.json:
        rows = [m.model_dump(exclude_none=True) for m in models]
        print_json(rows if args.segments else (rows[0] if rows else {}))
        return rc
    con = out_console()
    for m in models:
        seg = f"segment {m.segment or m.segment_id}: " if args.segments else ""
        if m.status == "registered":
            con.print(
                f"{seg}model {m.name} version {m.version} (point {m.point_id}, loss {format_loss(m.loss)})"
            )
            con.print(f"  uri    {m.uri}")
            con.print(f"  source {m.source}")
            con.print(f"  serve  phpo serve --model {m.name}:{m.version}")
        elif m.status == "pending":
            con.print(f"{seg}no model registered yet (the segment has not ended, or MLflow is catching up)")
        else:
            con.print(f"{seg}no model: {m.detail or m.status}")
    return rc


# --- kill / pause / resume ---------------------------------------------------------------


def cmd_action(args: argparse.Namespace, make_client) -> int:
    with make_client() as client:
        task = {"kill": client.cancel, "pause": client.pause, "resume": client.resume}[args.command](args.id)
    if args.json:
        print_json(task_json(task))
    else:
        out_console().print(f"task {task.id}: {task.state.value}")
    return EXIT_OK


# --- logs --------------------------------------------------------------------------------


def cmd_logs(args: argparse.Namespace, make_client) -> int:
    """Exit 0 with logs, 4 for no logs (yet) or a point that is not the task's."""
    with make_client() as client:
        arts = sorted(client.artifacts(args.id, kind="log", point=args.point), key=lambda a: a.id)
        if args.json:
            texts = [(a, client.read_artifact(a.id).decode("utf-8", errors="replace")) for a in arts]
            print_json([{"artifact": a.model_dump(mode="json"), "text": t} for a, t in texts])
            return EXIT_OK if texts else EXIT_NOTHING
        if not arts:
            err_console().print(
                f"no logs yet for task {args.id}" + (f" point {args.point}" if args.point is not None else "")
            )
            return EXIT_NOTHING
        for a in arts:  # each written as soon as it is read: `phpo logs 7 | head` stops early
            text = client.read_artifact(a.id).decode("utf-8", errors="replace")
            sys.stdout.write(f"==> point {a.point_id} job {a.job_id}: {a.name} <==\n")
            sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
            sys.stdout.flush()
    return EXIT_OK


# --- wait --------------------------------------------------------------------------------


def cmd_wait(args: argparse.Namespace, make_client) -> int:
    with make_client() as client:
        try:
            task = client.wait(
                args.id, progress=not args.quiet, poll=args.poll, timeout=args.timeout, console=err_console()
            )
        except TimeoutError as e:
            err_console().print(f"[yellow]{e}[/]")
            if args.json:
                print_json(task_json(client.task(args.id)))
            return EXIT_TIMEOUT
    if args.json:
        print_json(task_json(task))
    else:
        out_console().print(summary_line(task))
        if task.message:
            out_console().print(f"message: {task.message}")
    return task_exit(task)
