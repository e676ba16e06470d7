from __future__ import annotations

import pytest

from phpo.schemas.states import (
    MACHINES,
    IllegalTransition,
    JobState,
    PointState,
    TaskState,
    allowed,
    check_transition,
)


@pytest.mark.parametrize("kind", sorted(MACHINES))
def test_every_state_has_a_rule_and_targets_are_states(kind):
    machine = MACHINES[kind]
    enum = type(next(iter(machine)))
    assert set(machine) == set(enum), f"{kind}: states without a rule"
    for targets in machine.values():
        assert targets <= set(enum)


def test_lifecycle_paths():
    check_transition("task", TaskState.submitted, TaskState.running)
    check_transition("task", TaskState.running, TaskState.paused)
    check_transition("task", TaskState.paused, TaskState.running)
    check_transition("point", PointState.ready, PointState.leased)
    check_transition("point", PointState.leased, PointState.ready)  # lost lease
    check_transition("job", JobState.running, JobState.lost)


@pytest.mark.parametrize(
    "kind, current, target",
    [
        ("task", "finished", "running"),
        ("task", "cancelled", "paused"),
        ("point", "evaluated", "ready"),
        ("point", "ready", "evaluated"),  # never evaluated without being leased
        ("point", "failed", "leased"),
        ("job", "succeeded", "running"),
        ("job", "queued", "succeeded"),
    ],
)
def test_illegal_transitions_are_refused_with_a_sentence(kind, current, target):
    assert not allowed(kind, current, target)
    with pytest.raises(IllegalTransition) as e:
        check_transition(kind, current, target)
    assert current in str(e.value) and target in str(e.value)
