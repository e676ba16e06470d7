"""Collect what a payload left behind: its output file turned into the point's result, the
steering command's ``%OUT`` into the next points, each failure with the end of its stderr.

The rules are the agent's and ``phpo run-local``'s alike (docs/payloads.md): anything but a
readable output with status 0 and a loss is a failed attempt whose message says why.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from phpo.schemas.archives import read_beneath
from phpo.schemas.jobs import PointResult
from phpo.schemas.points import EvaluationOutput
from phpo.schemas.upstream import STEERING_OUT

log = logging.getLogger("phpo.agent")

STDERR_TAIL_BYTES = 4000
OUTPUT_MAX_BYTES = 16 * 1024 * 1024
TIMEOUT_STATUS = 124  # like coreutils' timeout(1)


class Outcome:
    exited = "exited"
    timeout = "timeout"
    lost = "lost"  # the server says the lease is gone
    cancelled = "cancelled"  # the server asked to stop (task cancelled/paused)
    stopped = "stopped"  # the agent is shutting down
    pruned = "pruned"  # the server's pruner stopped the point and the payload did not stop by itself


def tail_text(path: Path, max_bytes: int = STDERR_TAIL_BYTES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    if size > max_bytes:
        text = "..." + text[text.find("\n") + 1 :] if "\n" in text else "..." + text
    return text.strip()


def with_stderr(message: str, stderr_path: Path) -> str:
    tail = tail_text(stderr_path)
    return f"{message}\n--- stderr (tail) ---\n{tail}" if tail else f"{message} (stderr was empty)"


class _BadOutput(Exception):
    """The output file cannot be read as the contract says; the message says why."""


def read_output(
    output_path: Path,
    outcome: str,
    rc: int | None,
    stderr_path: Path,
    point_id: int,
    timeout_s: float | None,
    root: Path | None = None,
) -> PointResult:
    """Turn what the payload left behind into the point's result (docs/payloads.md). Anything but a
    readable output with status 0 and a loss is a failed attempt whose message says why and
    shows the end of stderr. The file is read without following links below ``root`` (default:
    its folder)."""
    if outcome == Outcome.timeout:
        return PointResult(
            point_id=point_id,
            status=TIMEOUT_STATUS,
            message=with_stderr(
                f"timed out after {timeout_s:g} s (evaluationTimeout); "
                "the payload and its whole process group were killed",
                stderr_path,
            ),
        )
    root = output_path.parent if root is None else root
    try:
        out = _load_output(output_path, root, rc)
    except _BadOutput as e:
        return PointResult(
            point_id=point_id, status=rc if rc else 1, message=with_stderr(str(e), stderr_path)
        )
    return _result_of(out, output_path.name, rc, stderr_path, point_id)


def _load_output(output_path: Path, root: Path, rc: int | None) -> EvaluationOutput:
    name = output_path.name
    try:
        raw = json.loads(read_beneath(root, output_path.relative_to(root), OUTPUT_MAX_BYTES))
    except FileNotFoundError:
        raise _BadOutput(f"the payload exited with code {rc} and wrote no output file '{name}'") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise _BadOutput(f"the output file '{name}' is not valid JSON ({e}); exit code {rc}") from None
    if not isinstance(raw, dict):
        raise _BadOutput(
            f"the output file '{name}' must hold a JSON object like "
            f'{{"status": 0, "loss": 0.12}}, got {type(raw).__name__}; exit code {rc}'
        )
    try:
        return EvaluationOutput.model_validate(raw)
    except ValueError as e:
        raise _BadOutput(
            f"the output file '{name}' does not follow the contract: {e}; exit code {rc}"
        ) from None


def _result_of(
    out: EvaluationOutput, name: str, rc: int | None, stderr_path: Path, point_id: int
) -> PointResult:
    metrics = out.all_metrics()  # keys beyond status/loss/message/metrics are kept with the metrics
    if out.status != 0:
        own = out.message or "(no message)"
        return PointResult(
            point_id=point_id,
            status=out.status,
            metrics=metrics,
            message=with_stderr(
                f"the payload reported status {out.status}: {own}; exit code {rc}", stderr_path
            ),
        )
    if out.loss is None:
        return PointResult(
            point_id=point_id,
            status=rc if rc else 1,
            metrics=metrics,
            message=with_stderr(
                f"the output file '{name}' has status 0 but no loss; exit code {rc}", stderr_path
            ),
        )
    if rc:
        log.warning(
            "point %d: payload exited %s after writing a valid result; keeping the result", point_id, rc
        )
    return PointResult(point_id=point_id, status=0, loss=out.loss, metrics=metrics, message=out.message)


def read_steering_output(rundir: Path, rc: int | None) -> tuple[list[Any] | None, str | None]:
    """The points the steering command wrote to ``%OUT`` in ``rundir``, or None and why not."""
    try:
        points = json.loads(read_beneath(rundir, STEERING_OUT))
    except FileNotFoundError:
        return None, f"the steering command exited with code {rc} and wrote no output file (%OUT)"
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return None, f"the steering output (%OUT) is not valid JSON ({e}); exit code {rc}"
    if not isinstance(points, list):
        return None, (
            f"the steering output (%OUT) must be a JSON list of points, got "
            f"{type(points).__name__}; exit code {rc}"
        )
    return points, None
