"""The pruners a task may name (``pruner``/``prunerOptions``): Optuna's own classes, built from
the task's options. Nothing here decides; :mod:`phpo.server.services.pruning` does, with these."""

from __future__ import annotations

import inspect
from typing import Any

import optuna

PRUNERS: dict[str, type[optuna.pruners.BasePruner]] = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "asha": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "wilcoxon": optuna.pruners.WilcoxonPruner,
}


class PrunerError(ValueError):
    """A pruner name or option the task cannot have (the server answers 422 naming ``field``)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def make_pruner(name: str, options: dict[str, Any] | None = None) -> optuna.pruners.BasePruner | None:
    """A fresh pruner (None for ``none``); unknown names, unknown options and values the class
    refuses raise :class:`PrunerError`."""
    options = dict(options or {})
    if name == "none":
        if options:
            raise PrunerError("prunerOptions", "options given without a pruner")
        return None
    cls = PRUNERS.get(name)
    if cls is None:
        raise PrunerError("pruner", f"unknown pruner '{name}' (known: none, {', '.join(PRUNERS)})")
    params = inspect.signature(cls.__init__).parameters
    known = [p for p in params if p != "self"]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise PrunerError(
            "prunerOptions",
            f"{name} has no option {', '.join(map(repr, unknown))} (its options: {', '.join(known)})",
        )
    missing = [
        p
        for p, v in params.items()
        if p != "self"
        and v.default is inspect.Parameter.empty
        and v.kind is not inspect.Parameter.VAR_KEYWORD
        and p not in options
    ]
    if missing:
        raise PrunerError("prunerOptions", f"{name} needs {', '.join(missing)}")
    try:
        return cls(**options)
    except (ValueError, TypeError) as e:
        raise PrunerError("prunerOptions", f"{name}: {e}") from None
