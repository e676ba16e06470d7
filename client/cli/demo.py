"""``phpo demo``: a real HPO, end to end, on the embedded stack in a temporary directory.

A small neural network (scikit-learn ``MLPClassifier``) on real data (the 1,797 handwritten
digits bundled with scikit-learn, no download), trained epoch by epoch with a checkpoint after
each epoch; Optuna's TPE proposes learning rate, width, depth, L2 penalty, batch size and
activation; the loss is the validation error. The payload is ordinary user code speaking the
upstream file contract (see ``demo_payload/train.py`` and examples/demo/README.md).

The user's client config is never touched: the demo talks to its own server with explicit
url/token.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from rich.table import Table as RichTable

from phpo.schemas import TaskState

from ..client import Client
from ..progress import format_loss
from . import demo_payload
from .commands import err_console, out_console
from .stack import Stack, check_installed
from .upstream import CliError

DEFAULT_MAX_POINTS = 20  # Optuna TPE samples its first 10 at random: leave it room to learn
DEFAULT_PARALLEL = 2
TASK_NAME = "demo.digits-mlp"


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        import sklearn  # noqa: F401  (the payload needs it in the agent's environment, which is this one)
    except ImportError as e:
        raise CliError(
            f"phpo demo trains a scikit-learn model ({e}): pip install 'phpo[demo]' (or 'phpo[all]')"
        ) from None
    check_installed()
    max_points = args.max_points or DEFAULT_MAX_POINTS
    parallel = args.parallel or DEFAULT_PARALLEL
    if max_points < 1 or parallel < 1:
        raise CliError("--max-points and --parallel must be at least 1")
    keep = bool(args.keep or args.data_dir)
    data_dir = (
        Path(args.data_dir).expanduser().resolve()
        if args.data_dir
        else Path(tempfile.mkdtemp(prefix="phpo-demo-"))
    )
    err = err_console()
    t0 = time.monotonic()
    rc = 1
    try:
        payload = data_dir / "payload"
        payload.mkdir(parents=True, exist_ok=True)
        for name in demo_payload.FILES:
            shutil.copy2(demo_payload.PAYLOAD_DIR / name, payload / name)
        space = json.loads((payload / "search_space.json").read_text())

        err.print(f"[bold]phpo demo[/]: starting the embedded stack in {data_dir} ...")
        with Stack(data_dir, slots=parallel) as stack, Client(stack.url, stack.user_token) as client:
            err.print(
                f"server {stack.url} and one local agent ({parallel} slots) are up "
                f"after {time.monotonic() - t0:.1f} s"
            )
            sandbox = client.upload_sandbox(payload)
            task = client.submit(
                outDS=TASK_NAME,
                evaluationExec=f"{shlex.quote(sys.executable)} train.py",
                searchSpaceFile="search_space.json",
                searchSpace=space,
                maxPoints=max_points,
                nParallelEvaluation=parallel,
                checkPointToSave="checkpoint",
                # the demo's points train for a second or two; real tasks use minutes
                checkPointInterval="1s",
                evaluationTimeout=600,
                sandbox=sandbox,
                **({"optimizer": args.optimizer} if args.optimizer else {}),
            )
            err.print(
                f"submitted task {task.id} '{task.name}': {max_points} points, {parallel} at a time, "
                f"optimizer {task.spec.optimizer_name}\n"
                "  model: MLP on scikit-learn's 1,797 handwritten digits (8x8 pixels, 10 classes)\n"
                "  loss:  validation error on a 30 % hold-out; a checkpoint after every epoch, uploaded "
                "every second while a point trains"
            )
            task = client.wait(task.id, progress=True, poll=0.5, console=err)
            best = list(client.best(task.id))
            points = list(client.points(task.id))
            checkpoints = len(client.artifacts(task.id, kind="checkpoint"))
            seconds = time.monotonic() - t0
            err.print("stopping the agent and the server ...")
        rc = report(task, best, points, checkpoints, data_dir, keep, seconds)
    finally:
        if not keep:
            shutil.rmtree(data_dir, ignore_errors=True)
    return rc


def report(task, best, points, checkpoints: int, data_dir: Path, keep: bool, seconds: float) -> int:
    out = out_console()
    c = task.counts
    ok = task.state == TaskState.finished and best and best[0].loss is not None
    head = "[bold green]✔" if ok else "[bold red]✘"
    out.print(
        f"\n{head} task {task.id} {task.state.value}[/] in {seconds:.0f} s: "
        f"{c.evaluated} points evaluated, {c.failed} failed, {c.jobs} jobs, "
        f"{checkpoints} checkpoints uploaded while training"
    )
    if task.message:
        out.print(f"  message: {task.message}")
    evaluated = sorted((p for p in points if p.loss is not None), key=lambda p: (p.loss, p.id))
    if evaluated:
        names = list(evaluated[0].params)
        t = RichTable(title="best points (loss = validation error)", header_style="bold")
        for col in ("point", "loss", "accuracy", *names):
            t.add_column(col, justify="right")
        for p in evaluated[:5]:
            t.add_row(
                str(p.id),
                format_loss(p.loss),
                f"{100 * (1 - p.loss):.1f} %",
                *[_fmt(p.params.get(n)) for n in names],
            )
        out.print(t)
    if ok:
        b = best[0]
        out.print(
            f"[bold]best point[/] (point {b.point_id}): validation error {format_loss(b.loss)}, "
            f"accuracy {100 * (1 - b.loss):.1f} %"
        )
        out.print("  " + json.dumps(b.params))
    out.print("\n[bold]where to look next[/]")
    here = Path(sys.executable).parent
    if shutil.which("phpo") is None and (here / "phpo").exists():  # e.g. after `make demo`
        out.print(f'  phpo is not on your PATH: source {here / "activate"}  (or export PATH="{here}:$PATH")')
    if keep:
        out.print(
            f"  data kept in {data_dir} (database, artifacts, logs/)\n"
            f"  phpo up --data-dir {data_dir}      then, in another shell:\n"
            f"  phpo show {task.id}  ·  phpo best {task.id} --json  ·  phpo logs {task.id}"
        )
    else:
        out.print(
            "  phpo demo --keep          keep the data; then phpo up --data-dir DIR and phpo show/best/logs\n"
            "  phpo up                   your own stack; submit from a directory with train.py:\n"
            "  phpo --loadJson conf.json  or  phpo submit --evaluationExec 'python train.py' "
            "--searchSpaceFile search_space.json\n"
            f"  the demo's payload:        {demo_payload.PAYLOAD_DIR}  (examples/demo/README.md)"
        )
    return 0 if ok else 1


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)
