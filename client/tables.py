"""``Table``: the list the client returns for collections, readable in Jupyter.

A plain ``list`` of :mod:`phpo.schemas` models (so code that iterates or indexes keeps working)
that also renders as an HTML table in a notebook and turns into a pandas DataFrame on request.
pandas stays optional: the client's base install must not pull it in.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

T = TypeVar("T", bound=BaseModel)

# columns left out of the flat view: a task's full spec is one nested document, not a column
_HIDDEN = {"spec", "pareto", "intermediate"}
_HTML_ROWS = 50


def flatten(model: BaseModel) -> dict[str, Any]:
    """One row: top-level fields, with nested dicts (``params``, ``counts``, ``metrics``)
    spread into ``params.lr``-style columns so each hyperparameter gets its own column."""
    row: dict[str, Any] = {}
    for key, value in model.model_dump(mode="json").items():
        if key in _HIDDEN:
            continue
        if isinstance(value, dict):
            for sub, v in value.items():
                row[f"{key}.{sub}"] = v
        else:
            row[key] = value
    return row


class Table(list, Generic[T]):
    """A list of models with ``_repr_html_`` (Jupyter) and :meth:`to_pandas`."""

    def __init__(self, items: Iterable[T] = ()):
        super().__init__(items)

    def rows(self) -> list[dict[str, Any]]:
        return [flatten(m) for m in self]

    def columns(self) -> list[str]:
        cols: dict[str, None] = {}
        for row in self.rows():
            cols.update(dict.fromkeys(row))
        return list(cols)

    def to_pandas(self):
        """A ``pandas.DataFrame`` with one row per item (``params.*`` columns for points)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(
                "Table.to_pandas() needs pandas, which phpo does not install: pip install pandas"
            ) from None
        return pd.DataFrame(self.rows(), columns=self.columns())

    def _repr_html_(self) -> str:
        cols = self.columns()
        rows = self.rows()
        esc = html.escape
        head = "".join(f"<th>{esc(c)}</th>" for c in cols)
        body = []
        for row in rows[:_HTML_ROWS]:
            cells = "".join(f"<td>{esc(_fmt(row.get(c)))}</td>" for c in cols)
            body.append(f"<tr>{cells}</tr>")
        more = (
            f"<p>… {len(rows) - _HTML_ROWS} more rows (use .to_pandas())</p>"
            if len(rows) > _HTML_ROWS
            else ""
        )
        return (
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"<p>{len(rows)} rows</p>{more}"
        )

    def __repr__(self) -> str:
        return f"Table({list.__repr__(self)})"


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)
