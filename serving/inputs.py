"""Feature vectors from a request body, checked so that a wrong count or type is a 4xx that
names the field (``inputs[3][5]``), never a model error."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


class InputError(Exception):
    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.message, self.field = message, field


def rows_of(body: Any, n_features: int | None, dtype: str, max_rows: int) -> np.ndarray:
    """``{"inputs": [[f, ...], ...]}`` (or one flat vector), or TFaaS's ``{"keys": [...],
    "values": [...]}`` -> a 2-D array of the model's dtype."""
    if not isinstance(body, dict):
        raise InputError('the body must be a JSON object: {"inputs": [[feature, ...], ...]}', "body")
    key = "inputs" if "inputs" in body else ("values" if "values" in body else None)
    if key is None:
        raise InputError(
            'the body needs "inputs": a list of feature vectors (or TFaaS\'s "keys" and "values")', "inputs"
        )
    rows = body[key]
    if not isinstance(rows, list) or not rows:
        raise InputError(f'"{key}" must be a non-empty list of feature vectors', key)
    if not isinstance(rows[0], list):
        rows = [rows]  # one vector
        prefix = key
    else:
        prefix = None
    if len(rows) > max_rows:
        raise InputError(f'"{key}" holds {len(rows)} vectors; at most {max_rows} per request', key)
    if (
        key == "values"
        and isinstance(body.get("keys"), list)
        and n_features is not None
        and len(body["keys"]) != n_features
    ):
        raise InputError(f'"keys" names {len(body["keys"])} features; the model takes {n_features}', "keys")
    width = n_features if n_features is not None else (len(rows[0]) if isinstance(rows[0], list) else 0)
    for i, row in enumerate(rows):
        where = prefix or f"{key}[{i}]"
        if not isinstance(row, list):
            raise InputError(f"{where} must be a list of {width} numbers, got {type(row).__name__}", where)
        if len(row) != width:
            raise InputError(f"{where} has {len(row)} features; the model takes {width}", where)
        for j, v in enumerate(row):
            t = type(v)
            if (t is not float and t is not int) or (t is float and not math.isfinite(v)):
                at = f"{where}[{j}]"
                raise InputError(f"{at} must be a finite number, got {v!r} ({t.__name__})", at)
    return np.asarray(
        rows, dtype=np.dtype(dtype) if dtype in ("float32", "float64", "int32", "int64") else np.float64
    )
