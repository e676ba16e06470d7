"""``grid`` and ``random``: optimizers with no library state, rebuilt exactly from the history.

Both remember every point they have seen (told, handed out, or passed as pending) and never
hand one out twice; when no unseen point is left they return fewer points than asked, or none,
which ends the search.

``grid`` walks the cartesian product of every parameter's values in a fixed order (the first
parameter varies slowest). Categorical, int, fixed and stepped floats take all their values;
other floats take ``options["grid_points"]`` (default 5) values, evenly spaced (geometrically
for log); a normal parameter takes as many normal quantiles; an array takes the grid of each
element. A conditional parameter only multiplies the branches where it is active.

``random`` samples each parameter independently from its own distribution (log-uniform for
log, a true normal for normal) with a ``random.Random`` seeded from ``seed``. After a restart
the same seed replays the points already seen, skips them, and goes on where it stopped.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from statistics import NormalDist
from typing import Any

from phpo.schemas.search_space import (
    ArrayParam,
    CategoricalParam,
    FixedParam,
    FloatParam,
    IntParam,
    NormalParam,
    SearchSpace,
)

from .base import Optimizer, OptimizerConfig, Result
from .space_values import (
    finite_values,
    int_high,
    point_key,
    quantize_float,
    quantize_int,
    quantize_normal,
)

ValuesOf = Callable[[str, Any], Iterable[Any]]


def iter_points(space: SearchSpace, values_of: ValuesOf) -> Iterator[dict[str, Any]]:
    """Every point of the product of ``values_of(name, param)``, inactive parameters left out;
    lazy, so a huge grid costs only what is taken from it."""
    names = space.ordered_names()

    def walk(i: int, point: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if i == len(names):
            yield copy.deepcopy(point)
            return
        name = names[i]
        if not space.active(name, point):
            yield from walk(i + 1, point)
            return
        for v in values_of(name, space.params[name]):
            point[name] = v
            yield from walk(i + 1, point)
        point.pop(name, None)

    return walk(0, {})


def _spaced(lo: float, hi: float, k: int, log: bool) -> list[float]:
    if k == 1:
        return [math.sqrt(lo * hi) if log else (lo + hi) / 2]
    if log:
        a, b = math.log(lo), math.log(hi)
        vals = [math.exp(a + (b - a) * i / (k - 1)) for i in range(k)]
    else:
        vals = [lo + (hi - lo) * i / (k - 1) for i in range(k)]
    vals[0], vals[-1] = float(lo), float(hi)  # exact ends, no exp/log round-off
    return vals


def _unique(values: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def grid_values(p: Any, k: int) -> Iterable[Any]:
    """The values the grid takes for one parameter (``k`` = points for continuous ranges)."""
    vals = finite_values(p)
    if vals is not None:
        return vals
    if isinstance(p, FloatParam):  # no step: k evenly spaced values
        return _spaced(p.low, p.high, k, p.log)
    if isinstance(p, IntParam):  # pragma: no cover - ints are always finite
        return list(range(p.low, int_high(p) + 1, p.step))
    if isinstance(p, NormalParam):  # k quantiles of the normal (of log v for log)
        nd = NormalDist(p.mu, p.sigma)
        vals = [nd.inv_cdf((i + 0.5) / k) for i in range(k)]
        return _unique(quantize_normal(math.exp(v) if p.log else v, p) for v in vals)
    if isinstance(p, ArrayParam):
        one = _spaced(p.low, p.high, k, p.log)
        return (list(t) for t in itertools.product(one, repeat=p.size))
    raise ValueError(f"no grid for parameter kind {type(p).__name__}")


class _Seen(Optimizer):
    """Shared bookkeeping: the keys of every point told, handed out or passed as pending."""

    def __init__(self, config: OptimizerConfig):
        super().__init__(config)
        self._seen: set[str] = set()

    def tell(self, params: dict[str, Any], result: Result) -> None:
        self._seen.add(point_key(params))  # the result itself teaches these optimizers nothing

    def _note_pending(self, pending: Sequence[dict[str, Any]]) -> None:
        for p in pending:
            self._seen.add(point_key(p))


class GridSearch(_Seen):
    """Deterministic cartesian grid; see the module docstring."""

    name = "grid"

    def __init__(self, config: OptimizerConfig):
        super().__init__(config)
        options = dict(config.options)
        k = options.pop("grid_points", 5)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"grid: 'grid_points' must be a positive integer, got {k!r}")
        options.pop("seed", None)
        if options:
            raise ValueError(f"grid: unknown option(s) {sorted(options)}; grid takes grid_points")
        self._k = k
        self._points = iter_points(self.space, lambda _n, p: grid_values(p, k))

    def ask(self, n: int, pending: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
        self._note_pending(pending)
        out: list[dict[str, Any]] = []
        while len(out) < n:
            point = next(self._points, None)
            if point is None:
                break  # the grid is exhausted
            key = point_key(point)
            if key not in self._seen:
                self._seen.add(key)
                out.append(point)
        return out


class RandomSearch(_Seen):
    """Independent random sampling; see the module docstring."""

    name = "random"
    max_tries = 100  # draws per point before a finite space is enumerated instead

    def __init__(self, config: OptimizerConfig):
        super().__init__(config)
        options = dict(config.options)
        seed = options.pop("seed", config.seed)
        if options:
            raise ValueError(f"random: unknown option(s) {sorted(options)}; random takes seed")
        self._rng = random.Random(seed)
        self._finite = all(finite_values(p) is not None for p in self.space.params.values())

    def sample(self) -> dict[str, Any]:
        point: dict[str, Any] = {}
        for name in self.space.ordered_names():
            if self.space.active(name, point):
                point[name] = self._value(self.space.params[name])
        return point

    def _value(self, p: Any) -> Any:
        r = self._rng
        if isinstance(p, FixedParam):
            return copy.deepcopy(p.value)
        if isinstance(p, CategoricalParam):
            return copy.deepcopy(r.choice(p.choices))
        if isinstance(p, IntParam):
            hi = int_high(p)
            if p.log:  # log-uniform over [low - 0.5, high + 0.5], rounded to the grid
                v = math.exp(r.uniform(math.log(p.low - 0.5 if p.low > 0.5 else p.low), math.log(hi + 0.5)))
                return quantize_int(v, p.low, hi, p.step)
            return r.randrange(p.low, hi + 1, p.step)
        if isinstance(p, FloatParam):
            if p.step and not p.log:
                k_max = math.floor((p.high - p.low) / p.step + 1e-9)
                return quantize_float(p.low + r.randint(0, k_max) * p.step, p.low, p.high, p.step)
            v = _uniform(r, p.low, p.high, p.log)
            return quantize_float(v, p.low, p.high, p.step)
        if isinstance(p, NormalParam):
            v = r.gauss(p.mu, p.sigma)
            return quantize_normal(math.exp(v) if p.log else v, p)
        if isinstance(p, ArrayParam):
            return [_uniform(r, p.low, p.high, p.log) for _ in range(p.size)]
        raise ValueError(f"no sampler for parameter kind {type(p).__name__}")

    def ask(self, n: int, pending: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
        self._note_pending(pending)
        out: list[dict[str, Any]] = []
        while len(out) < n:
            point = self._fresh()
            if point is None:
                break  # every point of a finite space has been seen
            self._seen.add(point_key(point))
            out.append(point)
        return out

    def _fresh(self) -> dict[str, Any] | None:
        point: dict[str, Any] = {}
        for _ in range(self.max_tries):
            point = self.sample()
            if point_key(point) not in self._seen:
                return point
        if not self._finite:
            return point  # a continuous space this crowded: a repeat is the honest answer
        unseen = [
            p
            for p in iter_points(self.space, lambda _n, q: finite_values(q) or [])
            if point_key(p) not in self._seen
        ]
        return self._rng.choice(unseen) if unseen else None


def _uniform(r: random.Random, lo: float, hi: float, log: bool) -> float:
    if log:
        return min(max(math.exp(r.uniform(math.log(lo), math.log(hi))), lo), hi)
    return r.uniform(lo, hi)
