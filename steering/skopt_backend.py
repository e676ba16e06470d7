"""scikit-optimize behind phpo's ask-and-tell interface (``skopt.gp``, ``skopt.rf``, ...).

The canonical space is translated here, once, into skopt dimensions:

- float: ``Real`` (``log-uniform`` prior for log); a step becomes an ``Integer`` index ``k`` with
  the value ``low + k * step``; log + step is sampled on the log scale and snapped to the step;
- int: ``Integer`` (log-uniform for log); a step becomes an index, or (with log) is snapped;
- normal: ``Real`` on ``mu ± 4 sigma`` (``exp`` of it for log), then ``round(v / q) * q``;
- categorical: ``Categorical`` over the choices' indices (skopt needs hashable categories);
- array: one ``Real`` per element;
- fixed, and anything with a single possible value: injected, never a dimension.

skopt has no conditional spaces: every parameter is sampled and the inactive ones are dropped
from the point (the full vector is kept to tell the result). A point told without an asked
vector (history replay) fills its inactive parameters with a fixed default.

Batches: skopt's ``cl_min`` constant liar. Pending points (asked and not told, plus ``pending``
from the caller) are told to a copy of the optimizer with the lie (the best loss seen), then
each new point of the batch is asked from that copy and told to it as a lie before the next;
the real optimizer only ever holds real results. The copy is a deep copy, which keeps the
fitted model (skopt's ``copy()`` refits it), and results are told in one batch at the next ask,
so a batch of ``n`` costs ``n`` model fits (skopt's ``ask(n_points)`` + ``tell`` costs ``n + 2``);
for GP, the fits on lies keep the kernel hyperparameters of the real fit (only the real results
re-tune them), which removes most of their cost.
BLAS is held to one thread while skopt works: on small matrices two threads on two cores made
each fit 3-6x slower.

phpo's defaults are skopt's (``n_initial_points=10``, ``acq_func="gp_hedge"``) except two,
both overridable with options: ``model_queue_size=1`` (skopt otherwise keeps every model it ever
fitted, which a long-lived optimizer cannot afford) and ``acq_optimizer="sampling"`` (the
acquisition is maximized over 10,000 random candidates, without skopt's L-BFGS restarts for
GP): on Branin and Hartmann-6 (60 points, batches of 4) that took about half the CPU for a
similar median result. ``{"acq_optimizer": "lbfgs"}`` restores skopt's choice.

After a restart (results told or pending given before the first ask), the random stream is
re-derived from the seed and the history size, so the random initial points of the previous
instance are not handed out again.

Failed points: skopt has no notion of failure and phpo never invents a loss, so a failed point
is only dropped from the pending set; the model does not learn from it.

``skopt.gbrt``: scikit-optimize 0.10.2's ``GradientBoostingQuantileRegressor`` is not seen as a
regressor by scikit-learn >= 1.6 (its base classes are in the order the new estimator tags do
not read) and calls ``numpy.in1d``, removed in numpy 2.4. :class:`QuantileGBRT` fixes both, so
``skopt.gbrt`` works with the installed versions.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from phpo.schemas.search_space import (
    ArrayParam,
    CategoricalParam,
    FixedParam,
    FloatParam,
    IntParam,
    NormalParam,
    SearchSpace,
)
from sklearn.base import clone
from sklearn.ensemble import GradientBoostingRegressor
from skopt import Optimizer as SkOptimizer
from skopt.learning import GaussianProcessRegressor, GradientBoostingQuantileRegressor
from skopt.learning.gaussian_process.kernels import WhiteKernel
from skopt.space import Categorical, Dimension, Integer, Real
from threadpoolctl import threadpool_limits

from .base import FAILED, HistoryItem, Optimizer, OptimizerConfig, Result, plain_result
from .space_values import (
    int_high,
    normal_bounds,
    only_point,
    point_key,
    quantize_float,
    quantize_int,
    quantize_normal,
    to_python,
)

# skopt warns when its acquisition proposes a point it has seen; it then samples a random one
warnings.filterwarnings("ignore", message=r"The objective has been evaluated at point")

ESTIMATORS = {"gp": "GP", "rf": "RF", "et": "ET", "gbrt": "GBRT"}


class QuantileGBRT(GradientBoostingQuantileRegressor):
    """skopt's quantile GBRT, made usable with scikit-learn >= 1.6 and numpy >= 2.4."""

    def __sklearn_tags__(self):  # type: ignore[no-untyped-def]
        from sklearn.utils import RegressorTags

        tags = super().__sklearn_tags__()
        tags.estimator_type = "regressor"
        tags.regressor_tags = RegressorTags()
        return tags

    def predict(self, X, return_std=False, return_quantiles=False):  # type: ignore[no-untyped-def]
        if return_std and not return_quantiles:
            missing = {0.16, 0.5, 0.84} - set(self.quantiles)
            if missing:
                raise ValueError("return_std needs the quantiles 0.16, 0.5 and 0.84")
            q = list(self.quantiles)
            low = self.regressors_[q.index(0.16)].predict(X)
            high = self.regressors_[q.index(0.84)].predict(X)
            mean = self.regressors_[q.index(0.5)].predict(X)
            return mean, (high - low) / 2.0
        return super().predict(X, return_std=return_std, return_quantiles=return_quantiles)


def _estimator(kind: str, seed: int | None) -> Any:
    if kind == "gbrt":  # what skopt's cook_estimator("GBRT") builds, with the fixed class
        gbrt = GradientBoostingRegressor(n_estimators=30, loss="quantile")
        return QuantileGBRT(base_estimator=gbrt, random_state=seed)
    return ESTIMATORS[kind]


def _frozen_gp(fitted: GaussianProcessRegressor) -> GaussianProcessRegressor:
    """An unfitted GP with the kernel hyperparameters (noise included) of ``fitted``, fixed.

    The lies of a batch are told to a GP that keeps its hyperparameters, as constant-liar
    batches usually do: refitting them for made-up observations learns nothing real and was
    most of the cost of a batch.
    """
    kernel = clone(fitted.kernel_)
    if fitted.noise_ is not None:  # skopt zeroes the fitted noise in kernel_; put it back, fixed
        for name, part in kernel.get_params().items():
            if isinstance(part, WhiteKernel):
                kernel.set_params(
                    **{name: WhiteKernel(noise_level=fitted.noise_, noise_level_bounds="fixed")}
                )
                break
    frozen = clone(fitted)
    frozen.set_params(kernel=kernel, optimizer=None, n_restarts_optimizer=0)
    return frozen


class _Dims:
    """One canonical parameter <-> its skopt dimensions."""

    def __init__(
        self,
        dims: list[Dimension],
        decode: Callable[[list[Any]], Any],
        encode: Callable[[Any], list[Any] | None],
        default: list[Any],
    ):
        self.dims = dims
        self.decode = decode  # the parameter's slice of an skopt vector -> the point's value
        self.encode = encode  # the point's value -> its slice, None when not representable
        self.default = default  # slice used when the parameter is inactive in a told point


def _constant(value: Any) -> _Dims:
    return _Dims([], lambda _x: copy.deepcopy(value), lambda _v: [], [])


def _clamp(v: Any, lo: float, hi: float) -> float:
    return min(max(float(v), lo), hi)


def _mid(lo: float, hi: float, log: bool) -> float:
    return math.sqrt(lo * hi) if log else (lo + hi) / 2


def _index_dims(n: int, to_value: Callable[[int], Any], to_index: Callable[[Any], int | None]) -> _Dims:
    """A finite set of ``n + 1`` ordered values, searched as an integer index."""
    return _Dims(
        [Integer(0, n)],
        lambda x: to_value(int(x[0])),
        lambda v: None if (i := to_index(v)) is None else [i],
        [n // 2],
    )


def _dims(name: str, p: Any) -> _Dims:
    if isinstance(p, FixedParam):
        return _constant(p.value)
    if isinstance(p, FloatParam):
        lo, hi, step = p.low, p.high, p.step
        if lo == hi:
            return _constant(float(lo))
        prior = "log-uniform" if p.log else "uniform"
        if step and not p.log:
            k_max = math.floor((hi - lo) / step + 1e-9)
            if k_max == 0:
                return _constant(float(lo))
            return _index_dims(
                k_max,
                lambda k: quantize_float(lo + k * step, lo, hi, step),
                lambda v: min(max(round((float(v) - lo) / step), 0), k_max),
            )
        return _Dims(
            [Real(lo, hi, prior=prior)],
            lambda x: quantize_float(x[0], lo, hi, step),
            lambda v: [_clamp(v, lo, hi)],
            [_mid(lo, hi, p.log)],
        )
    if isinstance(p, IntParam):
        ilo, ihi, istep = p.low, int_high(p), p.step
        if ilo == ihi:
            return _constant(ilo)
        if istep > 1 and not p.log:
            return _index_dims(
                (ihi - ilo) // istep,
                lambda k: ilo + k * istep,
                lambda v: (quantize_int(v, ilo, ihi, istep) - ilo) // istep,
            )
        return _Dims(
            [Integer(ilo, ihi, prior="log-uniform" if p.log else "uniform")],
            lambda x: quantize_int(x[0], ilo, ihi, istep),
            lambda v: [quantize_int(v, ilo, ihi, istep)],
            [quantize_int(_mid(ilo, ihi, p.log), ilo, ihi, istep)],
        )
    if isinstance(p, NormalParam):
        nlo, nhi = normal_bounds(p)
        return _Dims(
            [Real(nlo, nhi, prior="log-uniform" if p.log else "uniform")],
            lambda x: quantize_normal(x[0], p),
            lambda v: [_clamp(v, nlo, nhi)],
            [_mid(nlo, nhi, p.log)],
        )
    if isinstance(p, CategoricalParam):
        choices = p.choices
        if len(choices) == 1:
            return _constant(choices[0])
        return _Dims(
            [Categorical(list(range(len(choices))))],
            lambda x: copy.deepcopy(choices[int(x[0])]),
            lambda v: [choices.index(v)] if v in choices else None,
            [0],
        )
    if isinstance(p, ArrayParam):
        if p.low == p.high:
            return _constant([float(p.low)] * p.size)
        alo, ahi, size = p.low, p.high, p.size
        prior = "log-uniform" if p.log else "uniform"
        return _Dims(
            [Real(alo, ahi, prior=prior) for _ in range(size)],
            lambda x: [float(e) for e in x],
            lambda v: [_clamp(e, alo, ahi) for e in v] if isinstance(v, list) and len(v) == size else None,
            [_mid(alo, ahi, p.log)] * size,
        )
    raise ValueError(f"parameter '{name}': no scikit-optimize translation for {type(p).__name__}")


def translate_space(space: SearchSpace) -> dict[str, _Dims]:
    """The canonical space as skopt dimensions, parents before their conditional children."""
    return {name: _dims(name, space.params[name]) for name in space.ordered_names()}


class SkoptOptimizer(Optimizer):
    """A scikit-optimize ``Optimizer`` driven by ask/tell. Not thread-safe: one caller at a time.

    Results are buffered and told in one batch at the next ask (one model fit, not one per
    result).
    """

    def __init__(self, config: OptimizerConfig, estimator: str = "gp"):
        super().__init__(config)
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown skopt estimator '{estimator}' (known: {', '.join(ESTIMATORS)})")
        self.name = f"skopt.{estimator}"
        if config.n_objectives != 1:
            raise ValueError(
                f"{self.name} optimizes one objective; for {config.n_objectives} objectives use optuna.nsga2"
            )
        self._sign = -1.0 if config.directions[0] == "maximize" else 1.0
        options = dict(config.options)
        seed = self._seed = options.pop("seed", config.seed)
        self._dims = translate_space(self.space)
        dims = [d for c in self._dims.values() for d in c.dims]
        self._opt: SkOptimizer | None = None
        if dims:
            # one model kept, not every model ever fitted (skopt's default grows without end)
            kwargs: dict[str, Any] = {
                "n_initial_points": 10,
                "model_queue_size": 1,
                "acq_optimizer": "sampling",
            }
            kwargs.update(options)
            if str(kwargs.get("acq_func", "")).endswith("ps"):
                raise ValueError(
                    f"{self.name}: acq_func {kwargs['acq_func']!r} needs run times phpo does not tell"
                )
            try:
                self._opt = SkOptimizer(
                    dims, base_estimator=_estimator(estimator, seed), random_state=seed, **kwargs
                )
            except TypeError as e:
                raise ValueError(f"{self.name}: bad option: {e}") from None
        # asked and not told: point key -> full skopt vectors, oldest first
        self._running: dict[str, deque[list[Any]]] = {}
        self._told_x: list[list[Any]] = []
        self._told_y: list[float] = []
        self._n_asked = 0
        self._n_told = 0
        self._asked = False

    # ---- translation -------------------------------------------------------------------

    def _decode(self, x: list[Any]) -> dict[str, Any]:
        point: dict[str, Any] = {}
        i = 0
        for name, d in self._dims.items():
            part = to_python(list(x[i : i + len(d.dims)]))
            i += len(d.dims)
            if self.space.active(name, point):
                point[name] = d.decode(part)
        return point

    def _encode(self, params: dict[str, Any]) -> list[Any] | None:
        x: list[Any] = []
        for name, d in self._dims.items():
            if not d.dims:
                continue
            part = d.encode(params[name]) if name in params else d.default
            if part is None:
                return None
            x.extend(part)
        return x

    # ---- ask / tell ----------------------------------------------------------------------

    def ask(self, n: int, pending: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
        if n <= 0:
            return []
        if self._opt is None:  # a one-point space: hand it out once
            if self._n_asked or self._n_told:
                return []
            self._n_asked += 1
            return [only_point(self.space)]
        if not self._asked:
            self._asked = True
            if self._n_told or pending:
                self._reseed()
        with threadpool_limits(1):  # small matrices: BLAS threads only fight each other
            xs = self._ask_batch(n, pending)
        out = []
        for x in xs:
            x = to_python(list(x))
            point = self._decode(x)
            self._running.setdefault(point_key(point), deque()).append(x)
            self._n_asked += 1
            out.append(point)
        return out

    def _reseed(self) -> None:
        """A restarted instance must not replay its predecessor's random initial points: its
        random stream is derived from the seed and the size of the history (reproducible)."""
        assert self._opt is not None
        seed = None if self._seed is None else (int(self._seed) * 1_000_003 + self._n_told) % (2**31 - 1)
        self._opt.rng = np.random.RandomState(seed)

    def _ask_batch(self, n: int, pending: Sequence[dict[str, Any]]) -> list[list[Any]]:
        """skopt's ``cl_min`` batch, on a copy that also holds the in-flight points as lies."""
        assert self._opt is not None
        self._flush()
        in_flight = [x for q in self._running.values() for x in q]
        counts: dict[str, int] = {}
        for params in pending:  # a multiset: in-flight points this instance did not hand out
            key = point_key(params)
            counts[key] = counts.get(key, 0) + 1
            if counts[key] > len(self._running.get(key, ())):
                x = self._encode(params)
                if x is not None:
                    in_flight.append(x)
        # a deep copy keeps the fitted model (skopt's own copy() refits it); it gets its own
        # random stream so that random initial points differ from batch to batch
        opt = copy.deepcopy(self._opt)
        opt.rng = np.random.RandomState(self._opt.rng.randint(0, np.iinfo(np.int32).max))
        if opt.models and isinstance(opt.models[-1], GaussianProcessRegressor):
            opt.base_estimator_ = _frozen_gp(opt.models[-1])
        lie = min(opt.yi) if opt.yi else 0.0  # cl_min: the best loss seen
        if in_flight:
            opt.tell(in_flight, [lie] * len(in_flight))
        xs = []
        for i in range(n):
            x = opt.ask()
            xs.append(x)
            if i < n - 1:
                opt.tell(x, lie)
        return xs

    def tell(self, params: dict[str, Any], result: Result) -> None:
        result = plain_result(result, self.config.n_objectives)
        y = None if result is FAILED else self._loss(result)  # a bad loss changes nothing
        key = point_key(params)
        queue = self._running.get(key)
        x = queue.popleft() if queue else None
        if queue is not None and not queue:
            del self._running[key]
        if y is None:
            return  # skopt cannot learn a failure; inventing a loss is not allowed
        self._n_told += 1
        if self._opt is None:
            return
        if x is None:
            x = self._encode(params)
            if x is None:
                return  # not representable in this space
        if not math.isfinite(y):
            return
        self._told_x.append(x)
        self._told_y.append(y)

    def restore(self, history: Sequence[HistoryItem]) -> list[dict[str, Any]]:
        pending = super().restore(history)
        self._flush()
        return pending

    def _loss(self, result: Result) -> float:
        v = result[0] if isinstance(result, list) and len(result) == 1 else result
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{self.name}: expected one number as the loss, got {result!r}")  # noqa: TRY004
        return self._sign * float(v)

    def _flush(self) -> None:
        """Tell buffered results in one batch: one model fit."""
        if self._told_x and self._opt is not None:
            with threadpool_limits(1):
                self._opt.tell(self._told_x, self._told_y)
            self._told_x, self._told_y = [], []

    @property
    def skopt(self) -> SkOptimizer | None:
        """The underlying skopt optimizer (real results only), for inspection."""
        self._flush()
        return self._opt
