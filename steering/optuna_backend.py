"""Optuna samplers behind phpo's ask-and-tell interface (``optuna.tpe``, ``optuna.gp``, ...).

The canonical space is translated here, once, into Optuna distributions and suggested
define-by-run (``study.ask()`` + ``trial.suggest_*``), so conditional parameters are suggested
only when their parents make them active.

The study lives in memory for the optimizer's whole life and is told each result once: asking
costs what it costs in Optuna itself, not a replay of the history (``benchmarks/steering_ask.py``).
Points handed out and not yet told stay ``RUNNING`` trials, which is what Optuna's constant liar
(TPE, on by default here) and GP sampler read to keep a batch from repeating itself; points in
flight that another instance handed out (``pending`` after a restart) are added as ``RUNNING``
trials for the same reason. A failed point becomes a ``FAIL`` trial, never a value.

Translation rules (shared value rules in :mod:`phpo.steering.space_values`):

- float: ``FloatDistribution`` (log as given); a step becomes an integer index ``k`` with the
  value ``low + k * step`` (exact, and Optuna forbids log + step); log + step is sampled on the
  log scale and snapped to the step;
- int: ``IntDistribution``; log + step (which Optuna forbids) is sampled on the log scale and
  snapped to the step;
- normal: a float on ``mu ± 4 sigma`` (``exp`` of it for log), then ``round(v / q) * q``;
- categorical: ``CategoricalDistribution`` of the choices, or of their indices when a choice is
  not a plain scalar (Optuna stores scalars only);
- array: one float distribution per element, named ``name[i]``;
- fixed, and anything with a single possible value: injected, never suggested.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, Trial, TrialState, create_trial
from phpo.schemas.search_space import (
    ArrayParam,
    CategoricalParam,
    FixedParam,
    FloatParam,
    IntParam,
    NormalParam,
    SearchSpace,
)

from .base import FAILED, HistoryItem, Optimizer, OptimizerConfig, Pruned, Result
from .space_values import (
    int_high,
    n_free,
    normal_bounds,
    point_key,
    quantize_float,
    quantize_int,
    quantize_normal,
)

optuna.logging.set_verbosity(optuna.logging.ERROR)
# samplers warn about independent sampling of conditional/categorical parameters and about
# experimental features at every trial; phpo chose those on purpose
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message=r".*(independent sampl|fall back to|falls back to).*")

_SCALARS = (str, int, float, bool, type(None))


class _Codec:
    """One canonical parameter <-> the Optuna distribution(s) that carry it."""

    def __init__(
        self,
        dists: dict[str, BaseDistribution],
        decode: Callable[[dict[str, Any]], Any],
        encode: Callable[[Any], dict[str, Any] | None],
    ):
        self.dists = dists
        self.decode = decode  # optuna values (by optuna name) -> the point's value
        self.encode = encode  # the point's value -> optuna values, None when not representable


def _suggest(trial: Trial, name: str, d: BaseDistribution) -> Any:
    if isinstance(d, FloatDistribution):
        return trial.suggest_float(name, d.low, d.high, log=d.log, step=d.step)
    if isinstance(d, IntDistribution):
        return trial.suggest_int(name, d.low, d.high, log=d.log, step=d.step)
    assert isinstance(d, CategoricalDistribution)
    return trial.suggest_categorical(name, d.choices)  # type: ignore[arg-type]


def _constant(value: Any) -> _Codec:
    return _Codec({}, lambda _v: copy.deepcopy(value), lambda _x: {})


def _clamp(v: Any, lo: float, hi: float) -> float:
    return min(max(float(v), lo), hi)


def _codec(name: str, p: Any) -> _Codec:
    if isinstance(p, FixedParam):
        return _constant(p.value)
    if isinstance(p, FloatParam):
        lo, hi, step = p.low, p.high, p.step
        if lo == hi:
            return _constant(float(lo))
        if step and not p.log:
            k_max = math.floor((hi - lo) / step + 1e-9)
            if k_max == 0:
                return _constant(float(lo))
            return _Codec(
                {name: IntDistribution(0, k_max)},
                lambda v: quantize_float(lo + v[name] * step, lo, hi, step),
                lambda x: {name: min(max(round((float(x) - lo) / step), 0), k_max)},
            )
        return _Codec(
            {name: FloatDistribution(lo, hi, log=p.log)},
            lambda v: quantize_float(v[name], lo, hi, step),
            lambda x: {name: _clamp(x, lo, hi)},
        )
    if isinstance(p, IntParam):
        ilo, ihi, istep = p.low, int_high(p), p.step
        if ilo == ihi:
            return _constant(ilo)
        if p.log and istep > 1:
            return _Codec(
                {name: IntDistribution(ilo, ihi, log=True)},
                lambda v: quantize_int(v[name], ilo, ihi, istep),
                lambda x: {name: quantize_int(x, ilo, ihi, istep)},
            )
        return _Codec(
            {name: IntDistribution(ilo, ihi, log=p.log, step=istep)},
            lambda v: int(v[name]),
            lambda x: {name: quantize_int(x, ilo, ihi, istep)},
        )
    if isinstance(p, NormalParam):
        nlo, nhi = normal_bounds(p)
        return _Codec(
            {name: FloatDistribution(nlo, nhi, log=p.log)},
            lambda v: quantize_normal(v[name], p),
            lambda x: {name: _clamp(x, nlo, nhi)},
        )
    if isinstance(p, CategoricalParam):
        choices = p.choices
        if len(choices) == 1:
            return _constant(choices[0])
        if all(isinstance(c, _SCALARS) for c in choices):
            return _Codec(
                {name: CategoricalDistribution(choices)},
                lambda v: v[name],
                lambda x: {name: next(c for c in choices if c == x)} if x in choices else None,
            )
        return _Codec(
            {name: CategoricalDistribution(list(range(len(choices))))},
            lambda v: copy.deepcopy(choices[v[name]]),
            lambda x: {name: choices.index(x)} if x in choices else None,
        )
    if isinstance(p, ArrayParam):
        if p.low == p.high:
            return _constant([float(p.low)] * p.size)
        names = [f"{name}[{i}]" for i in range(p.size)]
        alo, ahi = p.low, p.high

        def encode(x: Any) -> dict[str, Any] | None:
            if not isinstance(x, list) or len(x) != len(names):
                return None
            return {n: _clamp(e, alo, ahi) for n, e in zip(names, x)}

        return _Codec(
            {n: FloatDistribution(alo, ahi, log=p.log) for n in names},
            lambda v: [float(v[n]) for n in names],
            encode,
        )
    raise ValueError(f"parameter '{name}': no Optuna translation for {type(p).__name__}")


def translate_space(space: SearchSpace) -> dict[str, _Codec]:
    """The canonical space as Optuna distributions, parents before their conditional children."""
    codecs = {name: _codec(name, space.params[name]) for name in space.ordered_names()}
    seen: dict[str, str] = {}
    for name, c in codecs.items():
        for oname in c.dists:
            if oname in seen and seen[oname] != name:
                raise ValueError(
                    f"parameters '{seen[oname]}' and '{name}' both map to the Optuna name '{oname}'; "
                    "rename one"
                )
            seen[oname] = name
    return codecs


# --------------------------------------------------------------------------------------
# samplers

SAMPLERS = ("tpe", "random", "cmaes", "gp", "qmc", "nsga2")


def _sampler_class(kind: str) -> tuple[type, dict[str, Any]]:
    """The sampler class and phpo's defaults for it (options override the defaults)."""
    s = optuna.samplers
    if kind == "tpe":
        return s.TPESampler, {"constant_liar": True}
    if kind == "random":
        return s.RandomSampler, {}
    if kind == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError as e:
            raise ValueError("optuna.cmaes needs the 'cmaes' package: pip install 'phpo[steering]'") from e
        return s.CmaEsSampler, {"warn_independent_sampling": False}
    if kind == "gp":
        try:
            import torch  # noqa: F401
        except ImportError as e:
            raise ValueError("optuna.gp needs PyTorch: pip install torch (a CPU build is enough)") from e
        return s.GPSampler, {}
    if kind == "qmc":
        return s.QMCSampler, {
            "scramble": True,
            "warn_independent_sampling": False,
            "warn_asynchronous_seeding": False,
        }
    if kind == "nsga2":
        return s.NSGAIISampler, {}
    raise ValueError(f"unknown Optuna sampler '{kind}' (known: {', '.join(SAMPLERS)})")


def make_sampler(kind: str, seed: int | None, options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    """Build a sampler; an option the sampler does not take is an error naming what it takes."""
    cls, kwargs = _sampler_class(kind)
    accepted = [n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "seed")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"optuna.{kind}: unknown option(s) {unknown}; {cls.__name__} takes {', '.join(accepted)}"
        )
    kwargs.update(options)
    try:
        with warnings.catch_warnings():  # "experimental" notices: phpo chose these samplers
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return cls(seed=seed, **kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"optuna.{kind}: bad option: {e}") from None


class OptunaOptimizer(Optimizer):
    """An in-memory Optuna study driven by ask/tell. Not thread-safe: one caller at a time."""

    def __init__(self, config: OptimizerConfig, sampler: str = "tpe"):
        super().__init__(config)
        self.name = f"optuna.{sampler}"
        self._options = dict(config.options)
        self._seed = self._options.pop("seed", config.seed)
        self._kind = sampler
        self._codecs = translate_space(self.space)
        self._single = n_free(self.space) == 0
        self.study = optuna.create_study(
            directions=list(config.directions), sampler=make_sampler(sampler, self._seed, self._options)
        )
        self._asked = False
        # asked (or registered pending) and not yet told: point key -> trials, oldest first
        self._running: dict[str, deque[Trial | int]] = {}
        self._n_trials = 0

    # ---- ask ---------------------------------------------------------------------------

    def ask(self, n: int, pending: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
        self._register_pending(pending)
        if not self._asked:
            self._asked = True
            if self._n_trials:
                self._reseed()
        if self._single:  # a one-point space: hand it out once
            if self._n_trials or n <= 0:
                return []
            n = 1
        with self._threads():
            return self._ask(n)

    def _threads(self) -> contextlib.AbstractContextManager[Any]:
        """optuna.gp does small linear algebra in torch and numpy: their thread pools only fight
        each other on a small machine (Optuna limits torch alone; BLAS is limited here too)."""
        if self._kind != "gp":
            return contextlib.nullcontext()
        from threadpoolctl import threadpool_limits

        return threadpool_limits(1)

    def _ask(self, n: int) -> list[dict[str, Any]]:
        out = []
        for _ in range(max(n, 0)):
            trial = self.study.ask()
            self._n_trials += 1
            point: dict[str, Any] = {}
            for name, codec in self._codecs.items():
                if self.space.active(name, point):
                    values = {oname: _suggest(trial, oname, d) for oname, d in codec.dists.items()}
                    point[name] = codec.decode(values)
            self._running.setdefault(point_key(point), deque()).append(trial)
            out.append(point)
        return out

    def _reseed(self) -> None:
        """A restarted instance must not replay its predecessor's random stream: the random
        and QMC samplers (and TPE's startup, CMA-ES's and NSGA-II's first generation, whose
        state lives in trial attributes the history does not carry) would hand out the same
        points again. The seed is derived from the seed and the size of the history, so a
        restart stays reproducible."""
        seed = None if self._seed is None else (int(self._seed) * 1_000_003 + self._n_trials) % (2**31 - 1)
        self.study.sampler = make_sampler(self._kind, seed, self._options)

    def _register_pending(self, pending: Sequence[dict[str, Any]]) -> None:
        """Add in-flight points this instance does not know as RUNNING trials (a multiset:
        a point given twice and known once is added once more)."""
        if not pending:
            return
        counts: dict[str, int] = {}
        for params in pending:
            key = point_key(params)
            counts[key] = counts.get(key, 0) + 1
            if counts[key] <= len(self._running.get(key, ())):
                continue
            frozen = self._frozen(params, TrialState.RUNNING, None)
            if frozen is None:
                continue  # not representable in this space: nothing for the sampler to avoid
            self.study.add_trial(frozen)
            self._running.setdefault(key, deque()).append(self._n_trials)
            self._n_trials += 1

    # ---- tell --------------------------------------------------------------------------

    def tell(self, params: dict[str, Any], result: Result) -> None:
        values, state = self._values(result)
        key = point_key(params)
        queue = self._running.get(key)
        if queue:
            trial = queue.popleft()
            if not queue:
                del self._running[key]
            if isinstance(result, Pruned):
                tid = (
                    self.study._storage.get_trial_id_from_study_id_trial_number(self.study._study_id, trial)
                    if isinstance(trial, int)
                    else trial._trial_id
                )
                if result.value is not None and self.config.n_objectives == 1:
                    self.study._storage.set_trial_intermediate_value(tid, int(result.step or 0), result.value)
                self.study.tell(trial, state=TrialState.PRUNED)
                return
            self.study.tell(trial, values=values, state=state)
            return
        frozen = self._frozen(params, state, values, result)
        if frozen is not None:
            self.study.add_trial(frozen)
            self._n_trials += 1

    def restore(self, history: Sequence[HistoryItem]) -> list[dict[str, Any]]:
        """Replay finished points in one bulk insert (no per-point sampler work)."""
        pending, bulk = [], []
        for item in history:
            if item.result is None:
                pending.append(item.params)
            elif self._running.get(point_key(item.params)):
                self.tell(item.params, item.result)
            else:
                values, state = self._values(item.result)
                frozen = self._frozen(item.params, state, values, item.result)
                if frozen is not None:
                    bulk.append(frozen)
        self.study.add_trials(bulk)
        self._n_trials += len(bulk)
        return pending

    def _values(self, result: Result) -> tuple[list[float] | None, TrialState]:
        if result is FAILED:
            return None, TrialState.FAIL
        if isinstance(result, Pruned):  # Optuna: a pruned trial's value is its last intermediate one
            one = result.value is not None and self.config.n_objectives == 1
            return ([result.value] if one else None), TrialState.PRUNED
        values = result if isinstance(result, list) else [result]
        if len(values) != self.config.n_objectives or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
        ):
            raise ValueError(
                f"{self.name}: expected a loss with {self.config.n_objectives} number(s) "
                f"({', '.join(self.config.directions)}), got {result!r}"
            )
        values = [float(v) for v in values]
        if not all(math.isfinite(v) for v in values):
            return None, TrialState.FAIL  # what Optuna itself does with NaN/inf
        return values, TrialState.COMPLETE

    def _frozen(
        self,
        params: dict[str, Any],
        state: TrialState,
        values: list[float] | None,
        result: Result | None = None,
    ) -> FrozenTrial | None:
        """A trial holding ``params`` (None when a value cannot be represented in the space,
        e.g. a categorical value that is not one of the choices)."""
        oparams: dict[str, Any] = {}
        dists: dict[str, BaseDistribution] = {}
        for name, codec in self._codecs.items():
            if name not in params or not codec.dists:
                continue
            encoded = codec.encode(params[name])
            if encoded is None:
                return None
            oparams.update(encoded)
            dists.update(codec.dists)
        inter = {int(result.step or 0): result.value} if isinstance(result, Pruned) and values else None
        return create_trial(
            state=state, values=values, params=oparams, distributions=dists, intermediate_values=inter
        )
