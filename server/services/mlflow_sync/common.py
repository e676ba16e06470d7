"""What the parts of the MLflow bridge share: the names and limits of what goes to MLflow (the
SQL, "this segment has ended" too, is repositories/mlflow_bridge.py)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

KEY_BAD = re.compile(r"[^A-Za-z0-9_\-. /]")
NAME_BAD = re.compile(r"[^A-Za-z0-9._+\-=]+")
PARAM_MAX = 6000
INTERMEDIATE_KEY = "intermediate"  # the metric whose history holds the sdk.report_intermediate values
MAX_ARTIFACT_BYTES = 200 * 2**20  # default; PHPO_MLFLOW_MAX_ARTIFACT_MB overrides


def mlflow_key(k: str) -> str:
    """A metric, param or tag key MLflow accepts."""
    return KEY_BAD.sub("_", str(k))[:250] or "_"


def param_value(v: Any) -> str:
    """A point's value as an MLflow param, in the form ``mlflow.log_params`` gives it (``str``),
    so a payload that logs its point again (upstream payloads do) writes the same value:
    MLflow refuses to change a param, and ``True`` logged as "true" would be a change."""
    return str(v)[:PARAM_MAX]


def number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def on_the_curve(values: list[Any] | None) -> list[Any]:
    """The intermediate values that go to MLflow: a value the agent could not send (NaN, inf)
    arrives as null and has no place on the curve. ``RunSync._sent`` counts entries of
    this list, so it matches the length of the run's history after a restart."""
    return [v for v in values or () if v.get("value") is not None]


def all_runs(client: Any, experiment_id: str, filter_string: str) -> Iterator[Any]:
    """Every run of the experiment matching ``filter_string``, deleted ones too, page by page."""
    from mlflow.entities import ViewType

    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=filter_string,
            run_view_type=ViewType.ALL,
            max_results=1000,
            page_token=token,
        )
        yield from page
        token = page.token
        if not token:
            return


def mlflow_up(client: Any) -> bool:
    """Whether MLflow answers at all: tells "MLflow is down" (retry the whole pass later) from
    "MLflow refused this one item" (record it and go on)."""
    try:
        client.search_experiments(max_results=1)
        return True
    except Exception:  # noqa: BLE001
        return False
