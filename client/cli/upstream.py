"""The upstream ``phpo`` submission options (docs/compatibility.md), ``--loadJson`` and ``--dumpJson``.

One table (:data:`OPTIONS`) drives the argparse options, the keys ``--loadJson`` accepts and the
keys ``--dumpJson`` writes, so the three can never disagree. Values go through
:class:`phpo.schemas.TaskSpec`, the same model the server validates with, so ``--noSubmit``
says exactly what the server would say.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from phpo.schemas import TaskSpec
from phpo.schemas.upstream import STEERING_IN, steering_command_line, steering_form

from ..client import spec_error
from ..errors import InvalidInput
from ..specfiles import resolve_spec_files
from ..specfiles import resolve_training_ds as _resolve_training_ds


class CliError(Exception):
    """A mistake in what the user typed or gave in a file; printed as ``error: ...``."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Opt:
    name: str
    kind: str  # int | float | str | flag | json | list
    metavar: str | None
    help: str
    group: str = "upstream"
    help_group: str = "config"  # panda-client's --helpGroup group (phpo extensions: "phpo")


OPTIONS: tuple[Opt, ...] = (
    Opt(
        "loadJson",
        "str",
        "FILE",
        "read options from a flat JSON object with the same names without dashes, e.g. "
        '{"nParallelEvaluation": 4}; keys phpo does not use (such as those panda-client\'s own '
        "--dumpJson writes) are named in one warning and ignored, null means the default; a value "
        "given on the command line wins over the JSON file",
    ),
    Opt(
        "dumpJson",
        "str",
        "FILE",
        "after submitting, write all options plus returnCode, returnOut and the task id "
        "(jediTaskID, taskID) to FILE",
    ),
    Opt("nParallelEvaluation", "int", "N", "points evaluated at the same time, per segment (default 1)"),
    Opt("maxPoints", "int", "N", "points evaluated in the whole search, per segment (default 10)"),
    Opt(
        "maxEvaluationJobs",
        "int",
        "N",
        "evaluation jobs allowed in the whole search, per segment; the task ends when reached "
        "(default 2 x maxPoints)",
    ),
    Opt(
        "maxPointsPerEvaluationJob",
        "int",
        "N",
        "points one evaluation job may evaluate one after another (default 1)",
    ),
    Opt("nPointsPerIteration", "int", "N", "most points one steering iteration generates (default 2)"),
    Opt(
        "minUnevaluatedPoints",
        "int",
        "N",
        "a new steering iteration starts when at most N points are unevaluated (default with a "
        "steering command: 0, as upstream: only when no point is waiting or running; with a built-in "
        "optimizer: keep every evaluation slot busy)",
    ),
    Opt("steeringContainer", "str", "IMAGE", "image the steering command runs in"),
    Opt(
        "steeringExec",
        "str",
        "STR",
        "steering command; placeholders %%IN, %%OUT, %%NUM_POINTS, %%MAX_POINTS, replaced anywhere "
        "in the string. Without --steeringContainer a string starting with 'run' is docker's "
        "arguments, as upstream ('run --rm -v \"$(pwd)\":/X IMAGE CMD...'); anything else runs as a "
        "shell command on the agent (implies --optimizer external)",
    ),
    Opt(
        "searchSpaceFile",
        "str",
        "FILE",
        "search space JSON (method/dimension, type/params/bounds or [low, high] forms; with "
        "--segmentSpecFile a list of spaces or one space cloned per segment)",
    ),
    Opt(
        "evaluationContainer",
        "str",
        "IMAGE",
        "image the evaluation runs in; without it the evaluation runs in the agent's environment",
    ),
    Opt("evaluationExec", "str", "STR", "evaluation command (placeholder %%SEGMENT_NAME); required"),
    Opt(
        "evaluationInput",
        "str",
        "NAME",
        "file holding the point, in the job's working directory (default input.json)",
    ),
    Opt(
        "evaluationTrainingData",
        "str",
        "NAME",
        "file holding the list of training files (default input_ds.json)",
    ),
    Opt("evaluationOutput", "str", "NAME", "file the evaluation writes its result to (default output.json)"),
    Opt("evaluationMeta", "str", "NAME", "optional metadata JSON (under 1 MB) the evaluation writes"),
    Opt("evaluationMetrics", "str", "NAME", "optional metrics file or tarball, kept as an artifact"),
    Opt(
        "checkPointToSave",
        "str",
        "LIST",
        "comma-separated files/dirs in the working dir, saved as a tarball while the job runs",
    ),
    Opt(
        "checkPointToLoad",
        "str",
        "NAME",
        "on resume, the saved tarball is placed under this name; without it, it is unpacked in place",
    ),
    Opt(
        "checkPointInterval",
        "duration",
        "MIN",
        "minutes between checks for changed checkpoint files (default 5); phpo also takes 30s, 2m, 1h",
    ),
    Opt(
        "architecture",
        "str",
        "SPEC",
        "CPU/GPU requirement, e.g. '#x86_64-*-avx2&nvidia', '#&nvidia:vram>=40960'",
    ),
    Opt(
        "segmentSpecFile",
        "str",
        "FILE",
        "segmented HPO: a JSON list of {name, files} or {name, datasets}, the names being files "
        "(or constituent directories) of --trainingDS",
    ),
    Opt(
        "trainingDS",
        "str",
        "NAME",
        "training data: a directory, a glob, or a comma-separated list of files/URLs",
        help_group="input",
    ),
    Opt("outDS", "str", "NAME", "task name; outputs and logs are grouped under it", help_group="output"),
    Opt(
        "site",
        "str",
        "SITES",
        "comma-separated sites allowed to run the evaluations (never the steering)",
        help_group="submit",
    ),
    Opt(
        "noSubmit",
        "flag",
        None,
        "validate and print what would be submitted, and the steering command as it will run for the "
        "first iteration; submit nothing",
        help_group="submit",
    ),
    # --- phpo extensions ---
    Opt(
        "optimizer",
        "str",
        "NAME",
        "built-in optimizer instead of a steering command (default optuna.tpe; e.g. skopt.gp, random, grid)",
        "phpo",
        "phpo",
    ),
    Opt(
        "optimizerOptions",
        "json",
        "JSON",
        "options of the optimizer as a JSON object, e.g. '{\"seed\": 1}'",
        "phpo",
        "phpo",
    ),
    Opt(
        "directions",
        "list",
        "LIST",
        "comma-separated minimize/maximize, one per objective (default minimize)",
        "phpo",
        "phpo",
    ),
    Opt(
        "maxAttempts",
        "int",
        "N",
        "tries per point before it is recorded as failed (default 3)",
        "phpo",
        "phpo",
    ),
    Opt("evaluationTimeout", "float", "SECONDS", "wall-clock limit of one payload run", "phpo", "phpo"),
    Opt(
        "nProcessesPerPoint",
        "int",
        "N",
        "processes (ranks) that train one point together on one agent, started by --launcher (default 1)",
        "phpo",
        "phpo",
    ),
    Opt(
        "nNodesPerPoint",
        "str",
        "M|MIN:MAX",
        "agents that train one point together (torchrun across agents, gang leasing; default 1; "
        "MIN:MAX: elastic, it starts with MIN and grows up to MAX)",
        "phpo",
        "phpo",
    ),
    Opt(
        "gangTimeout",
        "float",
        "SECONDS",
        "how long the agents that joined a point of several agents wait for the rest before their slots are "
        "given back (default 300)",
        "phpo",
        "phpo",
    ),
    Opt(
        "launcher",
        "str",
        "NAME",
        "how the agent starts a point's processes: none (default), torchrun (PyTorch DDP, rendezvous on "
        "loopback, one GPU of the slot per rank), horovodrun (where Horovod is installed) or dask (a Dask "
        "cluster of --nProcessesPerPoint workers on loopback for the point, DASK_SCHEDULER_ADDRESS set)",
        "phpo",
        "phpo",
    ),
    Opt(
        "pruner",
        "str",
        "NAME",
        "stop hopeless points early on their intermediate values: none (default), median, percentile, "
        "asha, hyperband or wilcoxon (Optuna's pruners; see docs/pruning.md)",
        "phpo",
        "phpo",
    ),
    Opt(
        "prunerOptions",
        "json",
        "JSON",
        "options of the pruner as a JSON object, e.g. '{\"n_warmup_steps\": 5}'",
        "phpo",
        "phpo",
    ),
    Opt(
        "prunerObjective",
        "str",
        "INDEX|NAME",
        "multi-objective tasks: the objective the pruner watches (an index or a name of --objectiveNames)",
        "phpo",
        "phpo",
    ),
    Opt(
        "objectiveNames", "list", "LIST", "comma-separated names of the objectives, in order", "phpo", "phpo"
    ),
    Opt(
        "intermediateMetric",
        "str",
        "NAME",
        "the payload's own MLflow metric whose values per step are its intermediate values (e.g. val_loss)",
        "phpo",
        "phpo",
    ),
    Opt(
        "sandboxFiles",
        "str",
        "LIST",
        "comma-separated files or directories (relative to the submit directory) shipped in the sandbox "
        "too, whatever their suffix; the sandbox stays under PHPO_SANDBOX_MAX_MB (20 MB)",
        "phpo",
    ),
    Opt(
        "penaltyLoss",
        "float",
        "LOSS",
        "the loss a steering command is shown for a point that failed every attempt (default 1e5, as "
        "iDDS; the point itself stays failed, without a loss)",
        "phpo",
        "phpo",
    ),
)


@dataclass(frozen=True)
class UpstreamOnly:
    """An upstream option phpo accepts without giving it a meaning of its own."""

    flags: tuple[str, ...]
    dest: str  # the key panda-client uses for it (in --loadJson and --dumpJson files)
    metavar: str | None  # None: a flag
    help: str
    help_group: str


UPSTREAM_ONLY: tuple[UpstreamOnly, ...] = (
    UpstreamOnly(
        ("-v",), "verbose", None, "verbose: print the task, the sandbox and the steering command", "config"
    ),
    UpstreamOnly(
        ("--official",), "official", None, "produce an official dataset (no effect in phpo)", "output"
    ),
    UpstreamOnly(("--workingGroup",), "workingGroup", "GROUP", "working group (no effect in phpo)", "submit"),
    UpstreamOnly(("-3",), "python3", None, "use python3 (no effect in phpo: it always is)", "submit"),
    UpstreamOnly(("--voms",), "vomsRoles", "ROLES", "grid proxy roles (no effect in phpo: tokens)", "submit"),
    UpstreamOnly(("--noEmail",), "noEmail", None, "no email notification (no effect in phpo)", "submit"),
    UpstreamOnly(("--intrSrv",), "intrSrv", None, "developers' server (no effect in phpo)", "expert"),
    UpstreamOnly(
        ("--alrbArgs",),
        "alrbArgs",
        "ARGS",
        "ALRB arguments for the evaluation container (no effect in phpo)",
        "config",
    ),
)
UPSTREAM_ONLY_BY_DEST = {u.dest: u for u in UPSTREAM_ONLY}
# options of panda-client that a --dumpJson file holds and that mean nothing when read back
DUMPED_CLI_OPTIONS = {"helpGroup", "help", "version", "loadJson"}
# the outcome of the submission that a --dumpJson file records
DUMP_OUTCOME = ("returnCode", "returnOut", "jediTaskID", "taskID")
HELP_GROUPS = {
    "input": "input dataset(s)/files/format",
    "output": "output dataset/files",
    "config": "single configuration file to set multiple options",
    "submit": "job submission/site/retry",
    "expert": "for experts/developers only",
    "phpo": "phpo's own options (extensions)",
}

BY_NAME = {o.name: o for o in OPTIONS}
# options that steer the command line itself rather than the task
CLI_ONLY = {"loadJson", "dumpJson", "noSubmit", "verbose", "sandboxFiles"}
JSON_KEYS = set(BY_NAME) - {"loadJson"}

_ARG_TYPES: dict[str, Callable[[str], Any]] = {
    "int": int,
    "float": float,
    "str": str,
    "json": str,
    "list": str,
    "duration": str,
}


def help_group_text(group: str) -> str:
    """What ``--helpGroup GROUP`` prints: the options of one of panda-client's groups (``ALL``:
    every group), named and explained as in ``--help``."""
    wanted = [g for g in HELP_GROUPS if group.lower() in (g, "all")]
    if not wanted:
        raise CliError(
            f"--helpGroup: unknown group {group!r}; use one of "
            f"{', '.join(g.upper() for g in HELP_GROUPS)} or ALL"
        )
    lines: list[str] = []
    for g in wanted:
        lines.append(f"{g.upper()}: {HELP_GROUPS[g]}")
        rows = [
            (f"--{o.name}" + (f" {o.metavar}" if o.metavar else ""), o.help.replace("%%", "%"))
            for o in OPTIONS
            if o.help_group == g
        ]
        rows += [
            (", ".join(u.flags) + (f" {u.metavar}" if u.metavar else ""), u.help)
            for u in UPSTREAM_ONLY
            if u.help_group == g
        ]
        if g == "config":
            rows.append(("--version", "print phpo's version"))
            rows.append(
                (
                    "--helpGroup GROUP",
                    "print the options of one group (INPUT, OUTPUT, CONFIG, SUBMIT, EXPERT, PHPO) or ALL",
                )
            )
        for flag, text in rows:
            lines.append(f"  {flag}\n      {text}")
        lines.append("")
    return "\n".join(lines)


class _HelpGroup(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        try:
            print(help_group_text(str(values)))
        except CliError as e:
            parser.exit(2, f"error: {e}\n")
        parser.exit(0)


def add_submit_options(parser: argparse.ArgumentParser) -> None:
    """Every option of :data:`OPTIONS`, with ``default=SUPPRESS`` so that only what the user
    typed appears in the namespace (that is how the command line wins over ``--loadJson``),
    and upstream's options that phpo accepts without effect (:data:`UPSTREAM_ONLY`)."""
    groups = {
        "upstream": parser.add_argument_group(
            "upstream options (PanDA phpo; docs/compatibility.md)",
            "Option names and meanings as in PanDA's phpo. With --loadJson FILE, options come from the "
            "JSON file first; a value given on the command line wins over the JSON file.",
        ),
        "phpo": parser.add_argument_group("phpo extensions"),
    }
    for o in OPTIONS:
        g = groups[o.group]
        if o.kind == "flag":
            g.add_argument(f"--{o.name}", action="store_true", default=argparse.SUPPRESS, help=o.help)
        else:
            g.add_argument(
                f"--{o.name}",
                type=_ARG_TYPES[o.kind],
                metavar=o.metavar,
                default=argparse.SUPPRESS,
                help=o.help,
            )
    g = parser.add_argument_group(
        "upstream options without effect in phpo",
        "Accepted so that upstream command lines and --loadJson files work unchanged; named in one notice.",
    )
    g.add_argument(
        "--helpGroup",
        metavar="GROUP",
        action=_HelpGroup,
        help="print the options of one group (INPUT, OUTPUT, CONFIG, SUBMIT, EXPERT, PHPO) or ALL",
    )
    for u in UPSTREAM_ONLY:
        if u.metavar is None:
            g.add_argument(*u.flags, dest=u.dest, action="store_true", default=argparse.SUPPRESS, help=u.help)
        else:
            g.add_argument(*u.flags, dest=u.dest, metavar=u.metavar, default=argparse.SUPPRESS, help=u.help)


def load_json_options(path: str | Path, warn: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """The flat JSON object of ``--loadJson``: the options phpo knows. ``null`` is the default (as
    panda-client's ``--dumpJson`` writes unset options); upstream options without effect in phpo
    are kept under their key for :func:`collect_options`'s notice; any other key is named in one
    warning and ignored, as panda-client does, with a hint where it looks like a typo."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except OSError as e:
        raise CliError(f"--loadJson: cannot read '{p}': {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise CliError(f"--loadJson: '{p}' is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise CliError(f"--loadJson: '{p}' must hold a JSON object of options, not a {type(data).__name__}")
    out: dict[str, Any] = {}
    unknown: list[str] = []
    for k, v in data.items():
        if k in JSON_KEYS or k in UPSTREAM_ONLY_BY_DEST:
            if v is not None and not (
                v is False and (k in UPSTREAM_ONLY_BY_DEST or BY_NAME[k].kind == "flag")
            ):
                out[k] = v
        elif k not in DUMPED_CLI_OPTIONS:
            unknown.append(k)
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, sorted(JSON_KEYS), n=1) if k not in DUMP_OUTCOME else []
            hints.append(f"'{k}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        outcome = " (the outcome of an earlier submission)" if set(unknown) <= set(DUMP_OUTCOME) else ""
        warn(
            f"--loadJson {p}: ignored {len(unknown)} key{'s' if len(unknown) > 1 else ''} that "
            f"{'are' if len(unknown) > 1 else 'is'} not an option{outcome}: " + ", ".join(hints)
        )
    return out


def _stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def collect_options(ns: argparse.Namespace, warn: Callable[[str], None] = _stderr) -> dict[str, Any]:
    """The effective options: the ``--loadJson`` file, overridden by the command line. Upstream
    options without effect in phpo are named in one notice and left out (``verbose`` is kept)."""
    given = vars(ns)
    cli = {k: v for k, v in given.items() if k in BY_NAME or k in UPSTREAM_ONLY_BY_DEST}
    merged: dict[str, Any] = {}
    if cli.get("loadJson"):
        merged.update(load_json_options(cli["loadJson"], warn))
    merged.update(cli)
    no_effect = [k for k in UPSTREAM_ONLY_BY_DEST if k in merged and k != "verbose"]
    if no_effect:
        names = ", ".join(UPSTREAM_ONLY_BY_DEST[k].flags[0] for k in no_effect)
        warn(f"accepted without effect in phpo (upstream grid options): {names}")
    return {k: v for k, v in merged.items() if k in BY_NAME or k == "verbose"}


def resolve_training_ds(value: str | list[str], base: Path, warn: Callable[[str], None]) -> list[str]:
    """``--trainingDS`` as :func:`phpo.client.specfiles.resolve_training_ds` reads it; a problem
    is a usage error of the command line."""
    try:
        return _resolve_training_ds(value, base, warn)
    except InvalidInput as e:
        raise CliError(e.message) from None


def build_spec(
    options: dict[str, Any], base: str | Path | None = None, warn: Callable[[str], None] = lambda m: None
) -> TaskSpec:
    """The :class:`TaskSpec` the options describe: files read, values normalized, validated."""
    base = Path(base or os.getcwd())
    data: dict[str, Any] = {k: v for k, v in options.items() if k not in CLI_ONLY}
    for name, example in (("optimizerOptions", '{"seed": 1}'), ("prunerOptions", '{"n_warmup_steps": 5}')):
        if isinstance(data.get(name), str):
            try:
                data[name] = json.loads(data[name])
            except json.JSONDecodeError as e:
                raise CliError(
                    f"--{name}: not valid JSON ({e}); give an object such as '{example}'"
                ) from None
    for name in ("directions", "objectiveNames"):
        if isinstance(data.get(name), str):
            data[name] = [x.strip() for x in data[name].split(",") if x.strip()]
    if isinstance(data.get("checkPointInterval"), str):
        try:
            data["checkPointInterval"] = float(data["checkPointInterval"])
        except ValueError:
            pass  # a duration with a unit, e.g. "30s"
    try:
        data = resolve_spec_files(data, base, warn)
    except InvalidInput as e:
        raise CliError(e.message) from None
    try:
        return TaskSpec.model_validate(data)
    except ValidationError as e:
        err = spec_error(e)
        raise CliError(f"invalid task: {err.message}") from None


def dump_options(
    options: dict[str, Any], *, return_code: int, return_out: str, task_id: int | None
) -> dict[str, Any]:
    """What ``--dumpJson`` writes: every option (given or default), then the outcome."""
    defaults = {name: f.default for name, f in TaskSpec.model_fields.items() if not f.is_required()}
    out: dict[str, Any] = {}
    for o in OPTIONS:
        if o.name in options:
            out[o.name] = options[o.name]
        elif o.kind == "flag":
            out[o.name] = False
        else:
            d = defaults.get(o.name)
            out[o.name] = d if isinstance(d, (int, float, str, type(None))) else None
    for name in ("optimizerOptions", "prunerOptions"):
        if out.get(name) is None:
            out[name] = {}
    out.update(returnCode=return_code, returnOut=return_out, jediTaskID=task_id, taskID=task_id)
    return out


def write_dump(path: str | Path, content: dict[str, Any]) -> None:
    p = Path(path)
    try:
        p.write_text(json.dumps(content, indent=2, default=str) + "\n")
    except OSError as e:
        raise CliError(f"--dumpJson: cannot write '{p}': {e.strerror or e}", code=1) from None


def submission_notes(spec: TaskSpec, options: dict[str, Any]) -> list[str]:
    """Lines for stderr before a submission: with ``--noSubmit`` or ``-v``, the steering command
    exactly as the agent will run it for the first iteration (placeholders filled in, the docker
    forms as the ``docker`` command they stand for); with ``-v`` also the task as sent."""
    if not (options.get("noSubmit") or options.get("verbose")):
        return []
    notes: list[str] = []
    if spec.steeringExec:
        n = min(spec.nPointsPerIteration, spec.maxPoints)
        line = steering_command_line(spec.steeringExec, spec.steeringContainer, n, spec.total_max_points)
        form = steering_form(spec.steeringExec, spec.steeringContainer)
        where = {
            "shell": "a shell command on the agent",
            "docker-args": "docker's arguments, run with the agent's container runtime",
            "container": f"in the container {spec.steeringContainer}, run with the agent's container runtime",
        }
        notes.append(
            f"steering ({where[form]}), first iteration, in its working directory holding "
            f"{STEERING_IN}: {line}"
        )
    if options.get("verbose"):
        notes.append("task: " + json.dumps(spec.model_dump(mode="json", exclude_unset=True), default=str))
    return notes
