"""A pruned point is told to the optimizers as what it is: Optuna samplers get a PRUNED trial
with the point's last intermediate value (live and after a restart's history replay), the
others its last value as a plain loss."""

from __future__ import annotations

from optuna.trial import TrialState

from phpo.schemas.search_space import parse_search_space
from phpo.steering.base import FAILED, HistoryItem, OptimizerConfig, Pruned, plain_result
from phpo.steering.registry import create_optimizer

SPACE = {"params": {"x": {"type": "float", "low": 0.0, "high": 1.0}}}


def _opt(name: str = "optuna.tpe"):
    return create_optimizer(name, OptimizerConfig(space=parse_search_space(SPACE), seed=1))


def test_optuna_gets_a_pruned_trial_with_its_last_value():
    opt = _opt()
    (p,) = opt.ask(1, [])
    opt.tell(p, Pruned(0.75, 4))
    (t,) = opt.study.trials
    assert t.state == TrialState.PRUNED and t.value == 0.75 and t.intermediate_values == {4: 0.75}


def test_optuna_history_replay_keeps_pruned_points_pruned():
    opt = _opt()
    opt.restore([HistoryItem({"x": 0.5}, Pruned(0.9, 2)), HistoryItem({"x": 0.1}, 0.2)])
    states = sorted((t.state.name, t.value) for t in opt.study.trials)
    assert states == [("COMPLETE", 0.2), ("PRUNED", 0.9)]


def test_optimizers_without_a_pruned_state_get_the_last_value():
    assert plain_result(Pruned(0.3, 1), 1) == 0.3
    assert plain_result(Pruned(0.3, 1), 2) == [0.3, 0.3]
    assert plain_result(Pruned(None), 1) is FAILED
    opt = _opt("skopt.gp")
    (p,) = opt.ask(1, [])
    opt.tell(p, Pruned(0.3, 1))  # no error: told as a loss of 0.3
