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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from phpo.schemas import TaskSpec

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


OPTIONS: tuple[Opt, ...] = (
    Opt(
        "loadJson",
        "str",
        "FILE",
        "read options from a flat JSON object with the same names without dashes, e.g. "
        '{"nParallelEvaluation": 4}; unknown keys are an error; a value given on the command line '
        "wins over the JSON file",
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
        "a new steering iteration starts when fewer unevaluated points remain (default: keep every "
        "evaluation slot busy)",
    ),
    Opt("steeringContainer", "str", "IMAGE", "image the steering command runs in"),
    Opt(
        "steeringExec",
        "str",
        "STR",
        "steering command; placeholders %%IN, %%OUT, %%NUM_POINTS, %%MAX_POINTS "
        "(implies --optimizer external)",
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
    Opt("segmentSpecFile", "str", "FILE", "segmented HPO: a JSON list of {name, files}, one per segment"),
    Opt(
        "trainingDS",
        "str",
        "NAME",
        "training data: a directory, a glob, or a comma-separated list of files/URLs",
    ),
    Opt("outDS", "str", "NAME", "task name; outputs and logs are grouped under it"),
    Opt("site", "str", "SITES", "comma-separated sites allowed to run the evaluations"),
    Opt("noSubmit", "flag", None, "validate and print what would be submitted; submit nothing"),
    # --- phpo extensions ---
    Opt(
        "optimizer",
        "str",
        "NAME",
        "built-in optimizer instead of a steering command (default optuna.tpe; e.g. skopt.gp, random, grid)",
        "phpo",
    ),
    Opt(
        "optimizerOptions",
        "json",
        "JSON",
        "options of the optimizer as a JSON object, e.g. '{\"seed\": 1}'",
        "phpo",
    ),
    Opt(
        "directions",
        "list",
        "LIST",
        "comma-separated minimize/maximize, one per objective (default minimize)",
        "phpo",
    ),
    Opt("maxAttempts", "int", "N", "tries per point before it is recorded as failed (default 3)", "phpo"),
    Opt("evaluationTimeout", "float", "SECONDS", "wall-clock limit of one payload run", "phpo"),
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
        "upstream-compatible: give failed points this loss (default: failed points have none)",
        "phpo",
    ),
)

BY_NAME = {o.name: o for o in OPTIONS}
# options that steer the command line itself rather than the task
CLI_ONLY = {"loadJson", "dumpJson", "noSubmit", "sandboxFiles"}
JSON_KEYS = set(BY_NAME) - {"loadJson"}

_ARG_TYPES: dict[str, Callable[[str], Any]] = {
    "int": int,
    "float": float,
    "str": str,
    "json": str,
    "list": str,
    "duration": str,
}


def add_submit_options(parser: argparse.ArgumentParser) -> None:
    """Every option of :data:`OPTIONS`, with ``default=SUPPRESS`` so that only what the user
    typed appears in the namespace (that is how the command line wins over ``--loadJson``)."""
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


def load_json_options(path: str | Path) -> dict[str, Any]:
    """The flat JSON object of ``--loadJson``; unknown keys are an error naming each of them."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except OSError as e:
        raise CliError(f"--loadJson: cannot read '{p}': {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise CliError(f"--loadJson: '{p}' is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise CliError(f"--loadJson: '{p}' must hold a JSON object of options, not a {type(data).__name__}")
    unknown = [k for k in data if k not in JSON_KEYS]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, sorted(JSON_KEYS), n=1)
            hints.append(f"'{k}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise CliError(f"--loadJson {p}: unknown option{'s' if len(unknown) > 1 else ''} " + ", ".join(hints))
    return data


def collect_options(ns: argparse.Namespace) -> dict[str, Any]:
    """The effective options: the ``--loadJson`` file, overridden by the command line."""
    cli = {k: v for k, v in vars(ns).items() if k in BY_NAME}
    merged: dict[str, Any] = {}
    if cli.get("loadJson"):
        merged.update(load_json_options(cli["loadJson"]))
    merged.update(cli)
    return merged


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
    if isinstance(data.get("optimizerOptions"), str):
        try:
            data["optimizerOptions"] = json.loads(data["optimizerOptions"])
        except json.JSONDecodeError as e:
            raise CliError(
                f"--optimizerOptions: not valid JSON ({e}); give an object such as '{{\"seed\": 1}}'"
            ) from None
    if isinstance(data.get("directions"), str):
        data["directions"] = [x.strip() for x in data["directions"].split(",") if x.strip()]
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
    if out.get("optimizerOptions") is None:
        out["optimizerOptions"] = {}
    out.update(returnCode=return_code, returnOut=return_out, jediTaskID=task_id, taskID=task_id)
    return out


def write_dump(path: str | Path, content: dict[str, Any]) -> None:
    p = Path(path)
    try:
        p.write_text(json.dumps(content, indent=2, default=str) + "\n")
    except OSError as e:
        raise CliError(f"--dumpJson: cannot write '{p}': {e.strerror or e}", code=1) from None
