"""The ask-and-tell interface every optimizer plugin implements.

The HPO manager keeps one :class:`Optimizer` per task segment in memory, tells it every result
once, and asks it for new points. After a server restart it builds a fresh one with
:meth:`Optimizer.restore` from the database's history, so nothing lives only in memory.
Built-in plugins run in the server process (off the request path); the ``external`` steering
command is not an Optimizer: it runs as a steering job on an agent (see ``external.py``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from phpo.schemas.points import Loss
from phpo.schemas.search_space import SearchSpace


class _Failed:
    """Result of a point whose every attempt failed: told as failed, never as a made-up loss."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "FAILED"


FAILED = _Failed()


@dataclass(frozen=True)
class Pruned:
    """Result of a point stopped early by the task's pruner: its last intermediate value
    (``None`` when it reported none) at ``step``. Optuna-based optimizers tell it as a PRUNED
    trial; the others as a loss of ``value`` (or as failed without one)."""

    value: float | None
    step: int | None = None


Result = Loss | _Failed | Pruned


def plain_result(result: Result, n_objectives: int) -> Loss | _Failed:
    """``result`` for an optimizer that knows no pruned state: a pruned point's last value as its
    loss (on every objective of a multi-objective task), or failed without one."""
    if not isinstance(result, Pruned):
        return result
    if result.value is None:
        return FAILED
    return [result.value] * n_objectives if n_objectives > 1 else result.value


@dataclass(frozen=True)
class HistoryItem:
    """A point already known: ``result`` None means still pending (ready/leased)."""

    params: dict[str, Any]
    result: Result | None = None


@dataclass
class OptimizerConfig:
    space: SearchSpace
    directions: list[str] = field(default_factory=lambda: ["minimize"])
    seed: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def n_objectives(self) -> int:
        return len(self.directions)


class Optimizer(ABC):
    """Proposes points of ``config.space`` and learns from their results.

    Contract (the shared test suite in ``tests/steering`` checks every plugin):
    - ``ask(n, pending)`` returns at most ``n`` points, each a dict that fits the space
      (``space.problems(p) == []``), JSON-serializable with plain Python types (no numpy
      scalars); fewer than ``n`` (or none) means the search space is exhausted.
    - ``pending`` are points in flight that this instance did not itself hand out (e.g. after
      a restart); together with the points it handed out and was not yet told about, they are
      treated as running so a batch does not duplicate them.
    - ``tell(params, result)`` records a loss (a number, or a list for multi-objective) or
      :data:`FAILED`. Telling a point it never asked for is allowed (history replay).
    """

    name: str = "?"

    def __init__(self, config: OptimizerConfig):
        self.config = config
        self.space = config.space

    @abstractmethod
    def ask(self, n: int, pending: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]: ...

    @abstractmethod
    def tell(self, params: dict[str, Any], result: Result) -> None: ...

    def restore(self, history: Sequence[HistoryItem]) -> list[dict[str, Any]]:
        """Replay finished history; return the still-pending points (to pass as ``pending``)."""
        pending = []
        for item in history:
            if item.result is None:
                pending.append(item.params)
            else:
                self.tell(item.params, item.result)
        return pending
