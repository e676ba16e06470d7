"""Optimizer names -> plugins. A library is imported only when one of its optimizers is created,
so the server starts (and ``grid``/``random`` run) without Optuna or scikit-optimize loaded."""

from __future__ import annotations

from collections.abc import Callable

from .base import Optimizer, OptimizerConfig

DEFAULT = "optuna.tpe"


def _optuna(sampler: str) -> Callable[[OptimizerConfig], Optimizer]:
    def make(config: OptimizerConfig) -> Optimizer:
        from .optuna_backend import OptunaOptimizer

        return OptunaOptimizer(config, sampler)

    return make


def _skopt(estimator: str) -> Callable[[OptimizerConfig], Optimizer]:
    def make(config: OptimizerConfig) -> Optimizer:
        from .skopt_backend import SkoptOptimizer

        return SkoptOptimizer(config, estimator)

    return make


def _grid(config: OptimizerConfig) -> Optimizer:
    from .simple import GridSearch

    return GridSearch(config)


def _random(config: OptimizerConfig) -> Optimizer:
    from .simple import RandomSearch

    return RandomSearch(config)


_FACTORIES: dict[str, Callable[[OptimizerConfig], Optimizer]] = {
    "optuna.tpe": _optuna("tpe"),
    "optuna.random": _optuna("random"),
    "optuna.cmaes": _optuna("cmaes"),
    "optuna.gp": _optuna("gp"),
    "optuna.qmc": _optuna("qmc"),
    "optuna.nsga2": _optuna("nsga2"),
    "skopt.gp": _skopt("gp"),
    "skopt.rf": _skopt("rf"),
    "skopt.et": _skopt("et"),
    "skopt.gbrt": _skopt("gbrt"),
    "grid": _grid,
    "random": _random,
}

# optimizers that handle more than one objective (the others refuse a list of directions)
MULTI_OBJECTIVE = frozenset(
    {"optuna.tpe", "optuna.random", "optuna.gp", "optuna.qmc", "optuna.nsga2", "grid", "random"}
)


def available() -> list[str]:
    """The built-in optimizer names (``external`` is not one: it runs as a steering job)."""
    return list(_FACTORIES)


def create_optimizer(name: str | None, config: OptimizerConfig) -> Optimizer:
    """A fresh optimizer; a bad name or option is a ``ValueError`` saying what would be right."""
    name = name or DEFAULT
    if name == "external":
        raise ValueError(
            "'external' is not an in-process optimizer: the steering command runs as a steering job "
            "on an agent (see phpo.steering.external)"
        )
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ValueError(f"unknown optimizer '{name}' (known: {', '.join(_FACTORIES)})")
    if config.n_objectives > 1 and name not in MULTI_OBJECTIVE:
        raise ValueError(
            f"optimizer '{name}' handles a single objective; for {config.n_objectives} objectives use "
            f"one of {', '.join(sorted(MULTI_OBJECTIVE))}"
        )
    bad = [d for d in config.directions if d not in ("minimize", "maximize")]
    if bad:
        raise ValueError(f"directions: {bad} are not 'minimize' or 'maximize'")
    return factory(config)
