"""Shared pieces of the steering suite: the all-types space, a strict point checker, a factory.

Every test here runs the real libraries (Optuna, scikit-optimize, PyTorch for optuna.gp);
nothing is mocked.
"""

from __future__ import annotations

import json
import math
from typing import Any

from phpo.schemas.search_space import (
    ArrayParam,
    CategoricalParam,
    FixedParam,
    FloatParam,
    IntParam,
    NormalParam,
    SearchSpace,
    parse_search_space,
)
from phpo.steering.base import Optimizer, OptimizerConfig
from phpo.steering.registry import available, create_optimizer

NAMES = available()
OPTUNA = [n for n in NAMES if n.startswith("optuna.")]
SKOPT = [n for n in NAMES if n.startswith("skopt.")]

# options that reach each plugin's model-based phase after a few points (tests stay fast)
FAST: dict[str, dict[str, Any]] = {
    "optuna.tpe": {"n_startup_trials": 4},
    "optuna.gp": {"n_startup_trials": 12},
    "optuna.cmaes": {"popsize": 4},
    "optuna.nsga2": {"population_size": 4},
    # fewer random candidates for the acquisition than the 10,000 of the quality tests
    **{n: {"n_initial_points": 4, "n_points": 500} for n in SKOPT},
}

# every canonical parameter type; the conditional parameter and its parent come last so that
# even the grid (last parameter varies fastest) reaches it within a few points
ALL_TYPES = parse_search_space(
    {
        "f": {"type": "float", "low": -1.5, "high": 2},
        "flog": {"type": "float", "low": 1e-4, "high": 1, "log": True},
        "fstep": {"type": "float", "low": 0, "high": 1, "step": 0.1},
        "flogstep": {"type": "float", "low": 0.5, "high": 100, "log": True, "step": 0.5},
        "i": {"type": "int", "low": -3, "high": 7},
        "ilog": {"type": "int", "low": 1, "high": 1000, "log": True},
        "istep": {"type": "int", "low": 2, "high": 21, "step": 3},
        "ilogstep": {"type": "int", "low": 2, "high": 200, "step": 4, "log": True},
        "catobj": {"type": "categorical", "choices": [[1, 2], {"a": 1}]},
        "fixed": {"type": "fixed", "value": {"k": [1, 2]}},
        "norm": {"type": "normal", "mu": 0, "sigma": 2},
        "qlognorm": {"type": "normal", "mu": 0, "sigma": 1, "log": True, "step": 0.1},
        "arr": {"type": "array", "size": 3, "low": -1, "high": 1},
        "cat": {"type": "categorical", "choices": ["relu", "tanh", 3, None]},
        "cond": {"type": "float", "low": 0, "high": 1, "when": {"cat": ["tanh", 3]}},
    }
)

CONTINUOUS = parse_search_space(
    {"x": [-2.0, 2.0], "y": {"type": "float", "low": 1e-3, "high": 10, "log": True}, "z": [0.0, 1.0]}
)


def make(
    name: str, space: SearchSpace, seed: int = 0, directions: list[str] | None = None, **options: Any
) -> Optimizer:
    opts = {**FAST.get(name, {}), **options}
    if name in SKOPT and "n_points" in opts:  # skopt takes it inside acq_optimizer_kwargs
        opts["acq_optimizer_kwargs"] = {"n_points": opts.pop("n_points")}
    cfg = OptimizerConfig(space=space, seed=seed, options=opts, directions=directions or ["minimize"])
    return create_optimizer(name, cfg)


def _on_step(v: float, base: float, step: float) -> bool:
    k = (v - base) / step
    return abs(k - round(k)) < 1e-6


def strict_problems(space: SearchSpace, point: dict[str, Any]) -> list[str]:
    """``space.problems`` plus what it leaves to the optimizers: float steps, plain JSON types."""
    errs = list(space.problems(point))
    if json.loads(json.dumps(point)) != point:
        errs.append(f"not JSON round-trippable: {point!r}")
    for name, v in point.items():
        p = space.params.get(name)
        if isinstance(p, FloatParam):
            if type(v) is not float:
                errs.append(f"{name}: {type(v).__name__} is not float")
            elif p.step and not _on_step(v, p.low, p.step):
                errs.append(f"{name}: {v} is not on the step {p.step} from {p.low}")
        elif isinstance(p, IntParam) and type(v) is not int:
            errs.append(f"{name}: {type(v).__name__} is not int")
        elif isinstance(p, NormalParam):
            if type(v) is not float or not math.isfinite(v):
                errs.append(f"{name}: {v!r} is not a finite float")
            elif p.step and not _on_step(v, 0.0, p.step):
                errs.append(f"{name}: {v} is not a multiple of {p.step}")
        elif isinstance(p, ArrayParam) and not all(type(e) is float for e in v):
            errs.append(f"{name}: {v!r} holds non-floats")
        elif isinstance(p, (CategoricalParam, FixedParam)):
            pass  # covered by space.problems
    return errs
