"""Segmented HPO end to end (issue 6): one task, 5 segments, each with its own optimum and its
own training files, evaluated by a real agent process against a real server process.

The payload learns its segment's optimum only from the training-file list it is given, so a
job that saw another segment's files would optimize the wrong target; it also records the
files and the %SEGMENT_NAME it saw, which the test checks point by point."""

from __future__ import annotations

import json

from phpo.client import Client

from conftest import run_phpo
from .agent_helpers import PY, write_payload

OPTIMA = {f"seg{k}": k + 0.5 for k in range(5)}  # 0.5, 1.5, ..., 4.5 on x in [0, 5]

PAYLOAD = """\
import json, sys
segment = sys.argv[1]
files = json.load(open("input_ds.json"))
(target,) = [float(f.rsplit("_", 1)[1].removesuffix(".dat")) for f in files]
x = json.load(open("input.json"))["x"]
json.dump({"status": 0, "loss": (x - target) ** 2,
           "metrics": {"segment": segment, "files": files}}, open("output.json", "w"))
"""


def test_five_segments_each_find_their_own_optimum(live_server, start_agent, tmp_path):
    payload = write_payload(tmp_path / "payload.py", PAYLOAD)
    segments = [{"name": name, "files": [f"/data/{name}_{c}.dat"]} for name, c in OPTIMA.items()]
    start_agent(live_server, "--slots", "4")
    with Client(live_server.url, live_server.user_token) as c:
        task = c.submit(
            evaluationExec=f"{PY} {payload} %SEGMENT_NAME",
            segments=segments,
            searchSpace={"x": {"method": "uniform", "dimension": {"low": 0, "high": 5}}},
            maxPoints=25,
            nParallelEvaluation=2,
            nPointsPerIteration=2,
            outDS="segmented.e2e",
            optimizerOptions={"seed": 7},
            directory=None,
        )
        done = c.wait(task.id, progress=False, timeout=240)
        assert done.state == "finished", done.message
        assert done.n_segments == 5

        summary = {s.name: s for s in c.segments(task.id)}
        assert set(summary) == set(OPTIMA)
        for name, seg in summary.items():
            assert seg.n_evaluated == 25 and seg.n_failed == 0, (name, seg)

        for p in c.points(task.id):
            # each job saw only its own segment's files and its own name
            assert p.metrics["segment"] == p.segment
            assert p.metrics["files"] == [f"/data/{p.segment}_{OPTIMA[p.segment]}.dat"]

        best = {b.segment: b for b in c.best(task.id)}
        for name, target in OPTIMA.items():
            x = best[name].params["x"]
            # closer to its own optimum than to any other segment's, and near it
            assert min(OPTIMA.values(), key=lambda t: abs(t - x)) == target, (name, x)
            assert best[name].loss < 0.1, (name, best[name].loss)

    # the table a physicist takes to the next step: every segment's best at once
    out = run_phpo(
        "best",
        str(task.id),
        "--segments",
        "--json",
        "--url",
        live_server.url,
        "--token",
        live_server.user_token,
    )
    rows = json.loads(out.stdout)
    assert sorted(r["segment"] for r in rows) == sorted(OPTIMA)
    assert all(set(r) >= {"segment", "loss", "params"} for r in rows)
