"""``Table``: the list the client returns for collections, readable in Jupyter.

A plain ``list`` of :mod:`phpo.schemas` models (so code that iterates or indexes keeps working)
that also renders as an HTML table in a notebook and turns into a pandas DataFrame on request.
pandas stays optional: the client's base install must not pull it in.

In a notebook the table is sorted by loss (best first, points without a loss last) and leaves
out the columns one rarely reads (checksums, the task id every row shares, record bookkeeping
stamps); times are shown to the second. ``table.view(all_columns=True)`` shows everything, in
the list's own order; the list itself, ``rows()`` and ``to_pandas()`` keep every column.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

T = TypeVar("T", bound=BaseModel)

# columns left out of the flat view: a task's full spec is one nested document, not a column
_HIDDEN = {"spec", "pareto", "intermediate"}
_HTML_ROWS = 50
# left out of the notebook view unless asked for (Table.view(all_columns=True))
NOISE_COLUMNS = ("sha256", "task_id", "job_id", "created_at", "updated_at", "counts.cancelled")
_LOSS_KEYS = ("loss", "best_loss")


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

    def view(self, all_columns: bool = False, sort: str | None = "loss") -> TableView:
        """The notebook rendering: sorted by ``sort`` (``loss``: by loss, or best_loss for
        segments, best first; ``None``: the list's order), noise columns left out unless
        ``all_columns``."""
        return TableView(self, all_columns, sort)

    def _repr_html_(self) -> str:
        return self.view()._repr_html_()

    def __repr__(self) -> str:
        return f"Table({list.__repr__(self)})"


class TableView:
    """A :class:`Table` as an HTML table (see :meth:`Table.view`)."""

    def __init__(self, table: Table, all_columns: bool, sort: str | None):
        self.table, self.all_columns, self.sort = table, all_columns, sort

    def columns(self) -> list[str]:
        cols = self.table.columns()
        return cols if self.all_columns else [c for c in cols if c not in NOISE_COLUMNS]

    def rows(self) -> list[dict[str, Any]]:
        rows = self.table.rows()
        key = (
            next((k for k in _LOSS_KEYS if any(k in r for r in rows)), None)
            if self.sort == "loss"
            else self.sort
        )
        if key:
            rows = sorted(rows, key=lambda r: _sort_key(r.get(key)))
        return rows

    def _repr_html_(self) -> str:
        cols = self.columns()
        rows = self.rows()
        esc = html.escape
        head = "".join(f"<th>{esc(c)}</th>" for c in cols)
        body = []
        for row in rows[:_HTML_ROWS]:
            cells = "".join(f"<td>{esc(_fmt(row.get(c), self.all_columns))}</td>" for c in cols)
            body.append(f"<tr>{cells}</tr>")
        more = (
            f"<p>… {len(rows) - _HTML_ROWS} more rows (use .to_pandas())</p>"
            if len(rows) > _HTML_ROWS
            else ""
        )
        hidden = len(self.table.columns()) - len(cols)
        note = f" ({hidden} columns hidden: .view(all_columns=True) shows them)" if hidden else ""
        return (
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"<p>{len(rows)} rows{note}</p>{more}"
        )


def _sort_key(v: Any) -> tuple:
    """Values first, smallest first (a list of losses by its elements); missing ones last."""
    if isinstance(v, list):
        v = [x for x in v if isinstance(x, (int, float))] or None
    if v is None or (not isinstance(v, (int, float, list)) or isinstance(v, bool)):
        return (1, [] if v is None else [str(v)])
    return (0, v if isinstance(v, list) else [v])


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?$")


def _fmt(v: Any, exact: bool = False) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, str) and not exact:
        m = _STAMP.match(v)
        if m:  # an ISO time to the second: microseconds are noise in a table
            return f"{m.group(1)} {m.group(2)}" + ("" if m.group(4) in (None, "Z", "+00:00") else m.group(4))
    return str(v)
