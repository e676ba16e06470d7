"""``phpo run-local`` (the agent's side of it: the client CLI hands it the parsed options): try the payload once, here and now, before a task spends attempts on it.

It takes the options of ``phpo submit`` (``--loadJson`` too), validates them the same way, and
runs ``evaluationExec`` once in a directory laid out like an agent's job directory: the sandbox
unpacked (the same files ``phpo submit`` would ship, nothing else), the point in
``evaluationInput``, the training file list in ``evaluationTrainingData``, the ``PHPO_*``
variables the agent sets. The payload's output streams to the terminal; its ``evaluationOutput``
is read with the agent's own rules (:func:`.results.read_output`), so a
missing file, a crash or a malformed ``output.json`` shows in seconds, with the message a task
would record, instead of after three attempts on a remote site.

The point is ``--point JSON`` or the middle of the search space (midpoints, geometric for log
scales, the first choice of a categorical). The command runs in this environment, not in
``evaluationContainer`` (a warning says so).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from phpo.schemas import TaskSpec
from phpo.schemas.archives import extract
from phpo.schemas.search_space import (
    ArrayParam,
    CategoricalParam,
    FixedParam,
    FloatParam,
    IntParam,
    NormalParam,
    SearchSpace,
)
from phpo.schemas.payload import PHPO_DIR
from phpo.schemas.upstream import evaluation_command
from rich.markup import escape

from phpo.client.cli.commands import EXIT_FAILED, EXIT_OK, _sandbox_files, err_console, print_json
from phpo.client.cli.upstream import CliError, build_spec, collect_options
from phpo.client.sandbox import pack, plan_sandbox

from .launch import job_env, point_env
from .results import Outcome, read_output
from .mlflow_local import payload_env as mlflow_payload_env


def _middle(p: Any) -> Any:
    if isinstance(p, FloatParam):
        v = math.sqrt(p.low * p.high) if p.log else (p.low + p.high) / 2
        if p.step:
            v = min(p.high, p.low + round((v - p.low) / p.step) * p.step)
        return v
    if isinstance(p, IntParam):
        v = round(math.sqrt(p.low * p.high)) if p.log else (p.low + p.high) // 2
        return min(p.high, p.low + (v - p.low) // p.step * p.step)
    if isinstance(p, NormalParam):
        return math.exp(p.mu) if p.log else p.mu
    if isinstance(p, CategoricalParam):
        return p.choices[0]
    if isinstance(p, FixedParam):
        return p.value
    if isinstance(p, ArrayParam):
        return [math.sqrt(p.low * p.high) if p.log else (p.low + p.high) / 2] * p.size
    raise CliError(f"run-local: cannot pick a value for a {type(p).__name__}; give --point")


def middle_point(space: SearchSpace) -> dict[str, Any]:
    """A valid point in the middle of ``space`` (conditional parameters where they apply)."""
    point: dict[str, Any] = {}
    for name in space.ordered_names():
        if space.active(name, point):
            point[name] = _middle(space.params[name])
    return point


def _point(spec: TaskSpec, given: str | None, segment: int, warn) -> dict[str, Any]:
    space = spec.segment_spaces()[segment]
    if given is None:
        if space is None:
            raise CliError(
                "run-local: the task has no search space (its steering makes the points); "
                "give the point with --point '{\"lr\": 0.01}'"
            )
        return middle_point(space)
    try:
        point = json.loads(given)
    except json.JSONDecodeError as e:
        raise CliError(f"--point: not valid JSON ({e}); give an object such as '{{\"lr\": 0.01}}'") from None
    if not isinstance(point, dict):
        raise CliError(f"--point: must be a JSON object of parameter values, not {type(point).__name__}")
    for problem in space.problems(point) if space is not None else []:
        warn(f"--point: {problem} (running it anyway)")
    return point


def _tee(src, *sinks) -> threading.Thread:
    def pump() -> None:
        for chunk in iter(lambda: src.read1(65536), b""):
            for s in sinks:
                s.write(chunk)
                s.flush()

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    return t


def _run(
    command: str,
    workdir: Path,
    env: dict[str, str],
    timeout: float | None,
    stdout_path: Path,
    stderr_path: Path,
    quiet: bool,
) -> tuple[str, int | None, float]:
    """Run ``command`` through the shell in ``workdir``; (outcome, exit code, seconds)."""
    t0 = time.monotonic()
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            command,
            shell=True,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        term = [] if quiet else [sys.stderr.buffer]
        pumps = [_tee(proc.stdout, out, *term), _tee(proc.stderr, err, *term)]
        outcome = "exited"
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            outcome = "timeout"
        except KeyboardInterrupt:
            outcome = "interrupted"
        finally:
            if proc.poll() is None:
                for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                    try:
                        os.killpg(proc.pid, sig)
                        proc.wait(timeout=wait)
                        break
                    except (ProcessLookupError, subprocess.TimeoutExpired):
                        continue
            for t in pumps:
                t.join(timeout=5)
    return outcome, proc.returncode, time.monotonic() - t0


def cmd_run_local(args: argparse.Namespace) -> int:
    err = err_console()

    def warn(m: str) -> None:
        err.print(f"[yellow]warning:[/] {escape(m)}")

    options = collect_options(args)
    spec = build_spec(options, warn=warn)
    names = spec.segment_names
    if args.segment is None:
        seg = 0
    elif args.segment in names:
        seg = names.index(args.segment)
    else:
        raise CliError(
            f"--segment: the task has no segment {args.segment!r} (its segments: {', '.join(names)})"
        )
    point = _point(spec, args.point, seg, warn)
    if spec.evaluationContainer:
        warn(
            f"evaluationContainer {spec.evaluationContainer!r} is not used: the command runs in this environment"
        )
    plan = plan_sandbox(os.getcwd(), _sandbox_files(options.get("sandboxFiles")))
    tarball = pack(plan)  # the size cap of a real submit applies
    err.print(escape(plan.summary()), style="dim")

    workdir = (
        Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="phpo-run-local-"))
    )
    if args.workdir:
        if workdir.exists() and any(workdir.iterdir()):
            raise CliError(f"--workdir: '{workdir}' is not empty; give a new or empty directory")
        workdir.mkdir(parents=True, exist_ok=True)
    rundir, logdir = workdir / "run", workdir / "logs"
    rundir.mkdir()
    logdir.mkdir()
    if tarball is not None:
        # what the agent gets, unpacked by the agent's own code: no file the sandbox leaves out
        extract(io.BytesIO(tarball), rundir)
    (rundir / spec.evaluationInput).write_text(json.dumps(point))
    segment_files = list(spec.segments[seg].files) if spec.segments else []
    training = segment_files or list(spec.trainingFiles)
    if training:
        (rundir / spec.evaluationTrainingData).write_text(json.dumps(training))
    command = evaluation_command(spec.evaluationExec, names[seg])  # as the server hands it to an agent
    env = {
        **os.environ,
        **job_env(job_id=0, task_id=0, segment=names[seg], segment_id=seg, site="local", agent="run-local"),
        **point_env(
            workdir=str(rundir),
            input_file=spec.evaluationInput,
            output_file=spec.evaluationOutput,
            point_id=0,
            serial=0,
            attempt=1,
            resumed=False,
            checkpoint_to_save=spec.checkPointToSave or "",
            training_data=spec.evaluationTrainingData if training else None,
            checkpoint_to_load=spec.checkPointToLoad,
            meta=spec.evaluationMeta,
            metrics=spec.evaluationMetrics,
        ),
    }
    (rundir / PHPO_DIR).mkdir(exist_ok=True)
    env.pop("MLFLOW_RUN_ID", None)
    env.update(mlflow_payload_env(str(rundir), True, None))  # MLflow calls go to ./mlruns, as on an agent
    timeout = args.timeout if args.timeout is not None else spec.evaluationTimeout
    err.print(f"[bold]run-local[/]: point {escape(json.dumps(point))}\n  in {rundir}\n  $ {escape(command)}")
    outcome, rc, seconds = _run(
        command, rundir, env, timeout, logdir / "stdout.txt", logdir / "stderr.txt", args.quiet
    )
    if outcome == "interrupted":
        err.print(f"interrupted; the job directory stays: {workdir}")
        return 130
    result = read_output(
        rundir / spec.evaluationOutput,
        Outcome.timeout if outcome == "timeout" else Outcome.exited,
        rc,
        logdir / "stderr.txt",
        0,
        timeout,
    )
    ok = result.status == 0 and result.loss is not None
    notes = _checkpoint_notes(spec, rundir) if ok else []
    if args.json:
        print_json(
            {
                "ok": ok,
                "point": point,
                "exit_code": rc,
                "seconds": round(seconds, 3),
                "workdir": str(workdir),
                **result.model_dump(mode="json", exclude={"point_id"}),
                "notes": notes,
            }
        )
    if ok:
        err.print(
            f"[bold green]✔ the payload works[/] in {seconds:.1f} s: loss {result.loss}"
            + (f", metrics {escape(json.dumps(result.metrics))}" if result.metrics else "")
        )
        for n in notes:
            warn(n)
    else:
        err.print(
            f"[bold red]✘ this point would fail[/] (exit code {rc}, {seconds:.1f} s):\n{escape(result.message or '')}"
        )
    if ok and not args.keep and not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        err.print(f"the job directory stays for a look: {workdir}", style="dim")
    return EXIT_OK if ok else EXIT_FAILED


def _checkpoint_notes(spec: TaskSpec, rundir: Path) -> list[str]:
    """What --checkPointToSave names but the payload did not create (nothing would be saved)."""
    names = [x.strip() for x in (spec.checkPointToSave or "").split(",") if x.strip()]
    return [
        f"checkPointToSave names '{n}' but the payload did not create it: no checkpoint would be saved"
        for n in names
        if not (rundir / n).exists()
    ]
