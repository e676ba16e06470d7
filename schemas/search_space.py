"""The canonical search space and converters from the three upstream formats (docs/compatibility.md).

Canonical form::

    {"params": {"lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": true},
                "layers": {"type": "int", "low": 1, "high": 4},
                "act": {"type": "categorical", "choices": ["relu", "tanh"]},
                "alpha": {"type": "float", "low": 0, "high": 1,
                          "when": {"act": ["tanh"]}}}}

``when`` makes a parameter conditional: it exists in a point only when each named parent's
value is one of the listed values. Every optimizer plugin translates *this* form, once per
library; the user's own text is kept beside it (external steering receives it verbatim).

An unknown method or type is an error naming the parameter, never silently dropped.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator


class SearchSpaceError(ValueError):
    """A search space that cannot be understood; the message names the parameter."""


class _Param(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    when: dict[str, list[Any]] | None = Field(
        default=None, description="active only when each named parent's value is in the list"
    )


class FloatParam(_Param):
    type: Literal["float"] = "float"
    low: float
    high: float
    log: bool = False
    step: float | None = Field(default=None, gt=0, description="quantization step (upstream q)")

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("low and high must be finite numbers")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is greater than high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale parameter needs low > 0, got {self.low}")
        return self


class IntParam(_Param):
    type: Literal["int"] = "int"
    low: int
    high: int
    log: bool = False
    step: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is greater than high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale parameter needs low > 0, got {self.low}")
        return self


class NormalParam(_Param):
    """Upstream normal/qnormal/lognormal/qlognormal. Unbounded: optimizers that need bounds
    use mu ± 4 sigma (in log space for ``log``)."""

    type: Literal["normal"] = "normal"
    mu: float
    sigma: float = Field(gt=0)
    log: bool = False
    step: float | None = Field(default=None, gt=0)


class CategoricalParam(_Param):
    """A choice among ``choices``, each listed entry equally likely. A value may be listed more
    than once, which weights it (``[1, 1, 2]``: 1 twice as likely as 2), as upstream's nevergrad
    ``Choice`` does; samplers draw an entry, not a distinct value."""

    type: Literal["categorical"] = "categorical"
    choices: list[Any] = Field(min_length=1)
    ordered: bool = False  # nevergrad TransitionChoice


class FixedParam(_Param):
    type: Literal["fixed"] = "fixed"
    value: Any


class ArrayParam(_Param):
    """A vector of floats (nevergrad Array); the point holds a list of ``size`` numbers."""

    type: Literal["array"] = "array"
    size: int = Field(ge=1, le=10_000)
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> ArrayParam:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is greater than high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale parameter needs low > 0, got {self.low}")
        return self


Param = Annotated[
    Union[FloatParam, IntParam, NormalParam, CategoricalParam, FixedParam, ArrayParam],
    Field(discriminator="type"),
]
_PARAM_ADAPTER: TypeAdapter[Any] = TypeAdapter(Param)
CANONICAL_TYPES = frozenset({"float", "int", "normal", "categorical", "fixed", "array"})


class SearchSpace(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    params: dict[str, Param] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_conditions(self) -> SearchSpace:
        for name, p in self.params.items():
            for parent in p.when or {}:
                if parent == name:
                    raise ValueError(f"parameter '{name}': 'when' refers to itself")
                if parent not in self.params:
                    raise ValueError(f"parameter '{name}': 'when' refers to unknown parameter '{parent}'")
        return self

    def active(self, name: str, point: dict[str, Any]) -> bool:
        """Whether ``name`` belongs in ``point`` given its parents' values."""
        cond = self.params[name].when
        return not cond or all(point.get(k) in v for k, v in cond.items())

    def ordered_names(self) -> list[str]:
        """Parameter names, parents before the parameters that depend on them."""
        out: list[str] = []
        pending = dict(self.params)
        while pending:
            progressed = False
            for name, p in list(pending.items()):
                if all(parent in out for parent in (p.when or {})):
                    out.append(name)
                    del pending[name]
                    progressed = True
            if not progressed:
                raise SearchSpaceError(f"conditional parameters form a cycle: {sorted(pending)}")
        return out

    def problems(self, point: dict[str, Any]) -> list[str]:
        """What is wrong with ``point`` for this space (empty when it fits)."""
        errs: list[str] = []
        for name in self.ordered_names():
            p = self.params[name]
            if not self.active(name, point):
                if name in point:
                    errs.append(f"'{name}' is set but its condition {p.when} does not hold")
                continue
            if name not in point:
                errs.append(f"'{name}' is missing")
                continue
            errs.extend(f"'{name}': {e}" for e in _value_problems(p, point[name]))
        for extra in set(point) - set(self.params):
            errs.append(f"'{extra}' is not a parameter of the search space")
        return errs


def _value_problems(p: Any, v: Any) -> list[str]:
    tol = 1e-9
    if isinstance(p, FixedParam):
        return [] if v == p.value else [f"{v!r} is not the fixed value {p.value!r}"]
    if isinstance(p, CategoricalParam):
        return [] if v in p.choices else [f"{v!r} is not one of {p.choices!r}"]
    if isinstance(p, IntParam):
        if isinstance(v, bool) or not isinstance(v, int):
            return [f"{v!r} is not an integer"]
        if not p.low <= v <= p.high:
            return [f"{v} is outside [{p.low}, {p.high}]"]
        if (v - p.low) % p.step:
            return [f"{v} is not on the step {p.step} from {p.low}"]
        return []
    if isinstance(p, FloatParam):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return [f"{v!r} is not a number"]
        span = max(abs(p.high - p.low), 1.0) * tol
        if not p.low - span <= v <= p.high + span:
            return [f"{v} is outside [{p.low}, {p.high}]"]
        return []
    if isinstance(p, NormalParam):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return [f"{v!r} is not a number"]
        return []
    if isinstance(p, ArrayParam):
        if not isinstance(v, list) or len(v) != p.size:
            return [f"expected a list of {p.size} numbers"]
        bad = [x for x in v if not isinstance(x, (int, float)) or not p.low - tol <= x <= p.high + tol]
        return [f"values {bad!r} are outside [{p.low}, {p.high}]"] if bad else []
    return [f"unknown parameter kind {type(p).__name__}"]


# --------------------------------------------------------------------------------------
# converters


def _num(name: str, d: dict, key: str, *alts: str) -> float:
    for k in (key, *alts):
        if k in d:
            v = d[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise SearchSpaceError(f"parameter '{name}': '{k}' must be a number, got {v!r}")
            return v
    raise SearchSpaceError(f"parameter '{name}': '{key}' is missing")


def _messages(e: ValueError) -> str:
    """Pydantic's messages without its 'Value error, ' prefix, joined."""
    errors = getattr(e, "errors", None)
    if not callable(errors):
        return str(e)
    out = []
    for err in errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("params",))
        msg = str(err["msg"]).removeprefix("Value error, ")
        out.append(f"{loc}: {msg}" if loc and err["type"] != "value_error" else msg)
    return "; ".join(out)


def _build(name: str, cls: type, **kw: Any) -> Any:
    try:
        return cls(**kw)
    except ValueError as e:  # pydantic ValidationError is a ValueError
        raise SearchSpaceError(f"parameter '{name}': {_messages(e)}") from None


METHODS = (
    "categorical uniform uniformint quniform loguniform qloguniform normal qnormal lognormal qlognormal fixed"
).split()


def _from_method(name: str, spec: dict) -> Any:
    method = spec.get("method")
    dim = spec.get("dimension", {})
    if not isinstance(dim, dict):
        raise SearchSpaceError(f"parameter '{name}': 'dimension' must be an object")
    if method == "categorical":
        cats = dim.get("categories", dim.get("choices"))
        if not isinstance(cats, list) or not cats:
            raise SearchSpaceError(f"parameter '{name}': 'categories' must be a non-empty list")
        return _build(name, CategoricalParam, choices=cats)
    if method == "fixed":
        if "value" not in dim:
            raise SearchSpaceError(f"parameter '{name}': 'value' is missing")
        return FixedParam(value=dim["value"])
    if method == "uniformint":
        lo, hi = _num(name, dim, "low"), _num(name, dim, "high")
        if int(lo) != lo or int(hi) != hi:
            raise SearchSpaceError(f"parameter '{name}': uniformint bounds must be integers")
        return _build(name, IntParam, low=int(lo), high=int(hi))
    if method in ("uniform", "quniform", "loguniform", "qloguniform"):
        kw: dict[str, Any] = {"low": _num(name, dim, "low"), "high": _num(name, dim, "high")}
        kw["log"] = method.endswith("loguniform")
        if method.startswith("q"):
            kw["step"] = _num(name, dim, "q")
        return _build(name, FloatParam, **kw)
    if method in ("normal", "qnormal", "lognormal", "qlognormal"):
        kw = {"mu": _num(name, dim, "mu"), "sigma": _num(name, dim, "sigma"), "log": "log" in method}
        if method.startswith("q"):
            kw["step"] = _num(name, dim, "q")
        return _build(name, NormalParam, **kw)
    raise SearchSpaceError(f"parameter '{name}': unknown method {method!r} (known: {', '.join(METHODS)})")


NG_TYPES = ("Choice", "TransitionChoice", "Scalar", "Log", "Array")


def _ng_bounds(name: str, spec: dict) -> tuple[float, float]:
    params = spec.get("params") or {}
    if "bounds" in spec:
        b = spec["bounds"]
        if not (isinstance(b, list) and len(b) == 2):
            raise SearchSpaceError(f"parameter '{name}': 'bounds' must be [lower, upper]")
        lo, hi = b
        lo = lo[0] if isinstance(lo, list) else lo
        hi = hi[0] if isinstance(hi, list) else hi
        return _num(name, {"lower": lo}, "lower"), _num(name, {"upper": hi}, "upper")
    return _num(name, params, "lower", "low"), _num(name, params, "upper", "high")


def _from_ng(name: str, spec: dict) -> Any:
    kind = spec["type"]
    params = spec.get("params") or {}
    if kind in ("Choice", "TransitionChoice"):
        choices = params.get("choices", spec.get("choices"))
        if not isinstance(choices, list) or not choices:
            raise SearchSpaceError(f"parameter '{name}': 'choices' must be a non-empty list")
        return _build(name, CategoricalParam, choices=choices, ordered=kind == "TransitionChoice")
    if kind in ("Scalar", "Log"):
        lo, hi = _ng_bounds(name, spec)
        integer = bool(spec.get("integer", params.get("integer", False)))
        if integer:
            return _build(name, IntParam, low=math.ceil(lo), high=math.floor(hi), log=kind == "Log")
        return _build(name, FloatParam, low=lo, high=hi, log=kind == "Log")
    if kind == "Array":
        shape = params.get("shape", spec.get("shape"))
        if isinstance(shape, list):
            shape = math.prod(shape)
        if not isinstance(shape, int) or shape < 1:
            raise SearchSpaceError(f"parameter '{name}': Array needs a positive 'shape'")
        lo, hi = _ng_bounds(name, spec)
        return _build(name, ArrayParam, size=shape, low=lo, high=hi)
    raise SearchSpaceError(f"parameter '{name}': unknown type {kind!r} (known: {', '.join(NG_TYPES)})")


def _convert_param(name: str, spec: Any) -> Any:
    if isinstance(spec, (list, tuple)):
        if len(spec) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in spec):
            return _build(name, FloatParam, low=spec[0], high=spec[1])
        raise SearchSpaceError(f"parameter '{name}': a range must be [low, high] with two numbers")
    if not isinstance(spec, dict):
        raise SearchSpaceError(f"parameter '{name}': expected an object or [low, high], got {spec!r}")
    if "method" in spec:
        return _from_method(name, spec)
    kind = spec.get("type")
    if kind in NG_TYPES:
        return _from_ng(name, spec)
    if kind in CANONICAL_TYPES:
        try:
            return _PARAM_ADAPTER.validate_python(spec)
        except ValueError as e:
            raise SearchSpaceError(f"parameter '{name}': {_messages(e)}") from None
    if kind is not None:
        raise SearchSpaceError(
            f"parameter '{name}': unknown type {kind!r} "
            f"(known: {', '.join(sorted(CANONICAL_TYPES) + list(NG_TYPES))})"
        )
    raise SearchSpaceError(
        f"parameter '{name}': cannot tell its format; give 'method' + 'dimension', "
        "'type' (+ 'params'/'bounds'), or a [low, high] range"
    )


# --------------------------------------------------------------------------------------
# size limits: checked on the user's text before anything is converted, so that a huge space
# costs O(parameters) to refuse

MAX_PARAMS = 1_000
"""Most parameters in one search space."""
MAX_CHOICES = 10_000
"""Most choices of one categorical parameter."""


def _raw_choices(spec: Any) -> Any:
    """The choice list of a parameter in any of the accepted formats, if it has one."""
    if not isinstance(spec, dict):
        return None
    for holder in (spec, spec.get("dimension"), spec.get("params")):
        if isinstance(holder, dict):
            for key in ("choices", "categories"):
                if isinstance(holder.get(key), list):
                    return holder[key]
    return None


def check_space_size(raw: dict[str, Any]) -> None:
    """Refuse a space beyond :data:`MAX_PARAMS` parameters or :data:`MAX_CHOICES` choices of a
    parameter, naming the parameter and the limit."""
    if len(raw) > MAX_PARAMS:
        raise SearchSpaceError(f"the space has {len(raw)} parameters; at most {MAX_PARAMS} are accepted")
    for name, spec in raw.items():
        choices = _raw_choices(spec)
        if choices is not None and len(choices) > MAX_CHOICES:
            raise SearchSpaceError(
                f"parameter '{name}': {len(choices)} choices; at most {MAX_CHOICES} are accepted"
            )


def parse_search_space(raw: Any) -> SearchSpace:
    """Convert any accepted format (canonical, method/dimension, type/params/bounds, ranges)."""
    if isinstance(raw, SearchSpace):
        return raw
    if not isinstance(raw, dict) or not raw:
        raise SearchSpaceError("a search space must be a non-empty JSON object of parameters")
    if set(raw) == {"params"} and isinstance(raw["params"], dict):
        raw = raw["params"]
    check_space_size(raw)
    params = {str(name): _convert_param(str(name), spec) for name, spec in raw.items()}
    try:
        return SearchSpace(params=params)
    except ValueError as e:
        raise SearchSpaceError(_messages(e)) from None
