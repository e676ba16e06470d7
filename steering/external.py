"""The upstream steering command's files (docs/compatibility.md), as pure functions.

The server never runs a user's steering command: it writes the ``%IN`` content with
:func:`build_steering_input` into a steering job, an agent runs the command (placeholders
substituted by :func:`phpo.schemas.upstream.substitute_placeholders`), and the server checks the
``%OUT`` content with :func:`parse_steering_output` before storing a single point.

Failed points: upstream has no "failed" marker, only a loss or ``null``, and ``null`` means
"not evaluated yet", i.e. pending. A point whose every attempt failed must therefore never be
``null``: steering tools that subtract the pending points from ``%NUM_POINTS`` (hpogrid does)
would answer ``[]`` and end the search. It is given what iDDS gives it: the task's
``penaltyLoss`` when one is set, else upstream's ``1e5`` (:data:`UPSTREAM_FAILED_LOSS`). This
number exists only in the steering's input file: the point itself stays ``failed`` without a
loss, and built-in optimizers are told it failed. Cancelled points (never evaluated because
their segment ended) are listed with ``null``.

Numbers keep their JSON type: a loss is a float (``0.0`` is written ``0.0``, as iDDS stores
``float(loss)``), parameters are written as the steering proposed them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from phpo.schemas.search_space import SearchSpace
from phpo.schemas.upstream import UPSTREAM_FAILED_LOSS

_EVALUATED = "evaluated"
_FAILED = "failed"


class SteeringFileError(ValueError):
    """A steering input or output that breaks upstream's steering file format; the message names the item."""


def _field(point: Any, name: str, default: Any = None) -> Any:
    if isinstance(point, Mapping):
        return point.get(name, default)
    return getattr(point, name, default)


def _state(point: Any) -> str | None:
    state = _field(point, "state")
    return None if state is None else str(getattr(state, "value", state))


def _loss_of(point: Any, penalty_loss: float | None) -> Any:
    """The loss upstream sees: the real one as a float (``0.0`` included), for a failed point the
    task's penalty or iDDS's ``1e5``, else ``None`` (not evaluated yet)."""
    state = _state(point)
    loss = _field(point, "loss")
    if state == _FAILED:
        return float(penalty_loss) if penalty_loss is not None else UPSTREAM_FAILED_LOSS
    if state not in (None, _EVALUATED, "pruned"):  # a pruned point: its last intermediate value
        return None  # ready / leased / cancelled: not evaluated
    if isinstance(loss, bool) or loss is None:
        return loss
    if isinstance(loss, (int, float)):
        return float(loss)
    return [float(x) for x in loss]  # multi-objective


def build_steering_input(
    points: Iterable[Any],
    opt_space: Any,
    segmented: bool = False,
    n_segments: int | None = None,
    penalty_loss: float | None = None,
) -> dict[str, Any]:
    """The ``%IN`` file's content.

    ``points`` are every point generated so far: :class:`phpo.schemas.points.Point` objects or
    mappings with ``params``, ``loss``, ``state`` and (segmented) ``segment_id``. ``opt_space``
    is the search space exactly as the user wrote it; for a segmented task a single space is
    cloned per segment as ``{"model_id": i, "search_space": space}`` (``n_segments`` needed), a
    list is passed as it is. A task without a search space gives ``{}``.
    """
    items: list[Any] = []
    for p in points:
        params = _field(p, "params")
        if not isinstance(params, Mapping):
            raise SteeringFileError(
                f"point {_field(p, 'id', '?')}: 'params' must be an object, got {params!r}"
            )
        loss = _loss_of(p, penalty_loss)
        if segmented:
            items.append([[int(_field(p, "segment_id", 0)), dict(params)], loss])
        else:
            items.append([dict(params), loss])
    space: Any = {} if opt_space is None else opt_space
    if segmented and not isinstance(space, list):
        if n_segments is None:
            raise SteeringFileError("n_segments is needed to clone one search space over the segments")
        space = [{"model_id": i, "search_space": space} for i in range(n_segments)]
    return {"points": items, "opt_space": space}


def _short(v: Any, limit: int = 200) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_point(where: str, point: Any, space: SearchSpace | None) -> dict[str, Any]:
    if not isinstance(point, dict):
        raise SteeringFileError(
            f"{where}: a point must be a JSON object of parameter values, got {_short(point)}"
        )
    bad_keys = [k for k in point if not isinstance(k, str)]
    if bad_keys:
        raise SteeringFileError(f"{where}: parameter names must be strings, got {bad_keys!r}")
    if space is not None:
        problems = space.problems(point)
        if problems:
            raise SteeringFileError(
                f"{where}: the point does not fit the search space: {'; '.join(problems)}"
            )
    return point


def parse_steering_output(
    obj: Any,
    segmented: bool = False,
    n_segments: int = 1,
    spaces: SearchSpace | Sequence[SearchSpace | None] | None = None,
) -> list[dict[str, Any]] | list[tuple[int, dict[str, Any]]]:
    """Validate the ``%OUT`` content: a JSON list of points (segmented: ``[segment_id, point]``).

    ``obj`` is the parsed JSON, or its text. An empty list is valid: it ends the search. When
    canonical ``spaces`` are given (one space, or one per segment, ``None`` where unknown), each
    point is checked against its space. Every error names the offending item.
    """
    if isinstance(obj, (bytes, bytearray)):
        obj = obj.decode("utf-8", errors="replace")
    if isinstance(obj, str):
        try:
            obj = json.loads(obj)
        except json.JSONDecodeError as e:
            raise SteeringFileError(f"the steering output is not valid JSON: {e}") from None
    if not isinstance(obj, list):
        kind = type(obj).__name__ if obj is not None else "null"
        raise SteeringFileError(
            f"the steering output must be a JSON list of points, got {kind}: {_short(obj)}"
        )
    if isinstance(spaces, SearchSpace):
        per_segment: list[SearchSpace | None] = [spaces] * max(n_segments, 1)
    elif spaces is None:
        per_segment = [None] * max(n_segments, 1)
    else:
        per_segment = list(spaces)
        if segmented and len(per_segment) != n_segments:
            raise SteeringFileError(f"{len(per_segment)} search spaces given for {n_segments} segments")
    if not segmented:
        return [_check_point(f"item {i}", p, per_segment[0]) for i, p in enumerate(obj)]
    out: list[tuple[int, dict[str, Any]]] = []
    for i, item in enumerate(obj):
        where = f"item {i}"
        if not isinstance(item, list) or len(item) != 2:
            raise SteeringFileError(
                f"{where}: a segmented point must be [segment_id, point], got {_short(item)}"
            )
        seg, point = item
        if isinstance(seg, bool) or not isinstance(seg, int):
            raise SteeringFileError(f"{where}: the segment id must be an integer, got {_short(seg)}")
        if not 0 <= seg < n_segments:
            raise SteeringFileError(f"{where}: segment id {seg} is out of range (0..{n_segments - 1})")
        out.append((seg, _check_point(f"{where} (segment {seg})", point, per_segment[seg])))
    return out
