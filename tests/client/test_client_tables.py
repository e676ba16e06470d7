"""Table: a list that renders in Jupyter and becomes a DataFrame on request."""

from __future__ import annotations

import sys
from datetime import datetime, timezone

import pytest

from phpo.client import Table
from phpo.schemas import Point, PointState


def _points() -> Table[Point]:
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return Table(
        [
            Point(
                id=1,
                task_id=7,
                serial=0,
                params={"lr": 0.01, "act": "<relu>"},
                state=PointState.evaluated,
                loss=0.25,
                created_at=now,
            ),
            Point(id=2, task_id=7, serial=1, params={"lr": 0.1, "layers": 3}, state=PointState.ready),
        ]
    )


def test_table_is_a_list_of_models():
    t = _points()
    assert isinstance(t, list) and len(t) == 2
    assert t[0].params["lr"] == 0.01
    assert [p.id for p in t] == [1, 2]


def test_each_param_gets_its_own_column_in_first_seen_order():
    cols = _points().columns()
    assert cols.index("params.lr") < cols.index("params.act") < cols.index("params.layers")
    assert "params" not in cols and "intermediate" not in cols


def test_html_escapes_values_and_shows_every_row():
    html = _points()._repr_html_()
    assert html.startswith("<table>")
    assert "&lt;relu&gt;" in html and "<relu>" not in html
    assert html.count("<tr>") == 3  # header + 2 rows
    assert "2 rows" in html


def test_html_of_a_long_table_is_capped_and_says_so():
    t = Table([_points()[1].model_copy(update={"id": i}) for i in range(120)])
    html = t._repr_html_()
    assert html.count("<tr>") == 51
    assert "70 more rows" in html


def test_to_pandas_without_pandas_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if pandas were not installed
    with pytest.raises(ImportError, match="pip install pandas"):
        _points().to_pandas()


def test_to_pandas_gives_one_row_per_point():
    pd = pytest.importorskip("pandas", reason="pandas is optional and not installed here")
    df = _points().to_pandas()
    assert isinstance(df, pd.DataFrame)
    assert list(df["id"]) == [1, 2]
    assert df.loc[0, "params.lr"] == 0.01
