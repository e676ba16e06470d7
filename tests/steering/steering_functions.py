"""Standard test functions for the optimizer quality checks (known minima)."""

from __future__ import annotations

import math

BRANIN_MIN = 0.397887
HARTMANN6_MIN = -3.32237

BRANIN_SPACE = {
    "x1": {"type": "float", "low": -5.0, "high": 10.0},
    "x2": {"type": "float", "low": 0.0, "high": 15.0},
}
HARTMANN6_SPACE = {f"x{i}": {"type": "float", "low": 0.0, "high": 1.0} for i in range(1, 7)}


def branin(p: dict) -> float:
    x1, x2 = p["x1"], p["x2"]
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


_A = [
    [10, 3, 17, 3.5, 1.7, 8],
    [0.05, 10, 17, 0.1, 8, 14],
    [3, 3.5, 1.7, 10, 17, 8],
    [17, 8, 0.05, 10, 0.1, 14],
]
_P = [
    [0.1312, 0.1696, 0.5569, 0.0124, 0.8283, 0.5886],
    [0.2329, 0.4135, 0.8307, 0.3736, 0.1004, 0.9991],
    [0.2348, 0.1451, 0.3522, 0.2883, 0.3047, 0.6650],
    [0.4047, 0.8828, 0.8732, 0.5743, 0.1091, 0.0381],
]
_ALPHA = [1.0, 1.2, 3.0, 3.2]


def hartmann6(p: dict) -> float:
    x = [p[f"x{i}"] for i in range(1, 7)]
    return -sum(
        _ALPHA[i] * math.exp(-sum(_A[i][j] * (x[j] - _P[i][j]) ** 2 for j in range(6))) for i in range(4)
    )


FUNCTIONS = {"branin": (branin, BRANIN_SPACE), "hartmann6": (hartmann6, HARTMANN6_SPACE)}


def best_loss(name: str, function: str, seed: int, n_evals: int = 60, batch: int = 4) -> float:
    """Best loss one optimizer reaches on one function, asking ``batch`` points at a time and
    telling each result; a module-level function so a process pool can run it."""
    from phpo.schemas.search_space import parse_search_space
    from phpo.steering.base import OptimizerConfig
    from phpo.steering.registry import create_optimizer

    fn, space = FUNCTIONS[function]
    opt = create_optimizer(name, OptimizerConfig(space=parse_search_space(space), seed=seed))
    best, n = float("inf"), 0
    while n < n_evals:
        points = opt.ask(min(batch, n_evals - n))
        assert points, f"{name} stopped after {n} points"
        for p in points:
            y = fn(p)
            best = min(best, y)
            opt.tell(p, y)
            n += 1
    return best
