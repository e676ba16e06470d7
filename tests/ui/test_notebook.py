"""A notebook run by a real Jupyter kernel (nbclient + ipykernel) against a real server and agent:
``wait`` shows a progress bar (ipywidgets) or, without ipywidgets, one HTML line updated in place,
then a summary; tables are sorted by loss without the noise columns; a task is a compact card;
``Client.plot`` gives a plotly figure. The cells' outputs are what is checked."""

from __future__ import annotations

import re
import textwrap

import pytest

from .ui_helpers import task_spec

pytestmark = pytest.mark.slow

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


def _run(cells: list[str], cwd) -> object:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(textwrap.dedent(c).strip()) for c in cells]
    nbclient.NotebookClient(
        nb,
        timeout=240,
        kernel_name="python3",
        resources={"metadata": {"path": str(cwd)}},
        store_widget_state=True,
    ).execute()
    return nb


def _html(outputs: list) -> list[str]:
    return [o["data"]["text/html"] for o in outputs if "data" in o and "text/html" in o["data"]]


def test_notebook_progress_summary_sorted_table_card_and_figure(bare_stack, tmp_path):
    stack = bare_stack
    spec = task_spec(max_points=6)
    setup = f"""
        import sys
        from phpo.client import Client
        c = Client({stack.url!r}, {stack.token!r})
        spec = {spec!r}
    """
    nb = _run(
        [
            setup,
            f"tid = c.submit(spec, directory={str(stack.payloads)!r}).id\ntask = c.wait(tid, poll=0.3)",
            # no ipywidgets: the HTML line that is updated in place
            f"sys.modules['ipywidgets'] = None\ntid2 = c.submit(spec, directory={str(stack.payloads)!r}).id\n"
            "task2 = c.wait(tid2, poll=0.3)",
            "c.points(tid)",
            "c.view(tid)",
            "fig = c.plot(tid, 'history')\nprint(type(fig).__name__, len(fig.data[0].x), fig.layout.yaxis.title.text)",
            "c.points(tid).view(all_columns=True)",
        ],
        tmp_path,
    )
    cells = nb.cells
    with stack.client() as c:
        tid = max(t.id for t in c.tasks())
        tid1, tid2 = tid - 1, tid
        pts = sorted(c.points(tid1), key=lambda p: p.loss)
        (best,) = c.best(tid1)

    # 1. the ipywidgets bar: one widget view, whose final state is the full bar and the summary
    views = [o for o in cells[1].outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(views) == 1, cells[1].outputs
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    bars = [m["state"] for m in state.values() if m["model_name"] == "IntProgressModel"]
    labels = [m["state"]["value"] for m in state.values() if m["model_name"] == "HTMLModel"]
    assert len(bars) == 1 and bars[0]["value"] == bars[0]["max"] == 6 and bars[0]["bar_style"] == "success"
    (summary,) = [x for x in labels if "phpo-summary" in x]
    assert f"task {tid1} finished: 6 of 6 points evaluated, 0 failed" in summary
    assert f"best loss {best.loss:.4g} (point {best.point_id}" in summary

    # 2. without ipywidgets: a single output, updated in place up to the summary
    shown = _html(cells[2].outputs)
    assert len(shown) == 1, cells[2].outputs
    assert "phpo-progress" in shown[0] and "6/6" in shown[0]
    assert f"task {tid2} finished: 6 of 6 points evaluated" in shown[0]

    # 3. the points table: best first, no checksum/bookkeeping columns, times to the second
    (table,) = _html(cells[3].outputs)
    head = re.findall(r"<th>(.*?)</th>", table)
    assert "loss" in head and "params.x" in head
    assert not {"created_at", "task_id", "sha256"} & set(head)
    col = head.index("loss")
    rows = re.findall(r"<tr>(.*?)</tr>", table)[1:]
    losses = [float(re.findall(r"<td>(.*?)</td>", r)[col]) for r in rows]
    assert losses == pytest.approx([p.loss for p in pts], rel=1e-5)
    stamps = [re.findall(r"<td>(.*?)</td>", r)[head.index("evaluated_at")] for r in rows]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", s) for s in stamps), stamps
    assert "columns hidden" in table

    # 4. the card: state, progress, best point, a small history of the six points
    (card,) = _html(cells[4].outputs)
    assert "phpo-card" in card and ">finished<" in card
    assert "6/6 evaluated" in card and f"point {best.point_id}" in card
    assert re.search(r'<svg class="phpo-history"[^>]*data-points="6"', card)
    assert card.count("<circle") == 6

    # 5. Client.plot is a plotly Figure of the evaluated points
    text = "".join(o.get("text", "") for o in cells[5].outputs if o["output_type"] == "stream")
    assert text.strip() == "Figure 6 loss"

    # 6. asked for, every column is there
    (full,) = _html(cells[6].outputs)
    assert "<th>created_at</th>" in full and "<th>task_id</th>" in full
