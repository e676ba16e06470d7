"""The base of transition rules: side effects that belong to a state change, declared by the
states they apply to (Prefect's server orchestration, synchronous).

A rule names its machine (``KIND``), the states it leaves from (``FROM_STATES``) and the states
it applies to (``TO_STATES``). :func:`~phpo.server.orchestration.transitions.set_state` runs the
rules of the machine's policy (:mod:`.policies`) in their order:

- ``before_transition`` may send the proposal elsewhere (:meth:`Proposal.reroute`), e.g. a
  failed attempt with attempts left goes back to ``ready``; a rule whose ``TO_STATES`` no longer
  holds the proposed state is skipped;
- ``after_transition`` runs once the row is in its new state, in the same transaction (e.g. a
  task that ended cancels its open work).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sqlalchemy.orm import Session


@dataclass
class Proposal:
    """One proposed state change, as the rules see it."""

    kind: str
    row: Any
    session: Session | None
    initial: str
    proposed: str
    message: str | None = None
    context: Any = None  # what the caller knows that the rules need (e.g. point_rules.AttemptEnded)
    notes: list[str] = field(default_factory=list)  # which rules rerouted it, and why
    apply: Callable[..., Any] | None = None  # set_state itself, for the cascades of after_transition

    def cascade(self, row: Any, target: str, *, message: str | None = None) -> Any:
        """Change another row's state from a rule (through ``set_state``, so its rules run too)."""
        assert self.apply is not None
        return self.apply(row, target, message=message)

    def reroute(self, target: str, *, why: str, message: str | None | type[Ellipsis] = ...) -> None:
        self.notes.append(f"{self.proposed} -> {target}: {why}")
        self.proposed = target
        if message is not ...:
            self.message = message  # type: ignore[assignment]


class TransitionRule:
    KIND: ClassVar[str]
    FROM_STATES: ClassVar[frozenset[str]]
    TO_STATES: ClassVar[frozenset[str]]

    @classmethod
    def applies(cls, initial: str, proposed: str) -> bool:
        return initial in cls.FROM_STATES and proposed in cls.TO_STATES

    def before_transition(self, p: Proposal) -> None:  # noqa: B027 - a hook, empty by default
        """Change ``p`` (``p.reroute``) before the state is written."""

    def after_transition(self, p: Proposal) -> None:  # noqa: B027 - a hook, empty by default
        """Side effects once the row is in ``p.proposed``."""
