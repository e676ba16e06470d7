"""End to end: an HPO task whose payload trains a small PyTorch model on a real signal/background
pair (CMS NanoAOD tt̄ against Drell-Yan, tests/data/hep) streamed by ``sdk.training_data()``,
with a real server process and the agent as a real process. The specs pass runs once for the
task: the first job computes it, the next one finds it in the agent machine's data cache."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from .agent_helpers import PY, get_points, sandbox_upload, submit, wait_task

pytestmark = pytest.mark.slow

pytest.importorskip("uproot", reason="phpo[data] is not installed (uproot)")
pytest.importorskip("torch", reason="the payload trains a PyTorch model")

HEP = Path(__file__).resolve().parents[1] / "data" / "hep"
SIGNAL = str(HEP / "nanoAOD_2015_CMS_Open_Data_ttbar.root")
BACKGROUND = str(HEP / "uproot-small-dy-withoffsets.root")

PAYLOAD = """\
import torch
from phpo.evaluation_container import sdk
from phpo.data.adapters import torch_loader

p = sdk.load_point()
torch.manual_seed(0)
stream = sdk.training_data(labels={"ttbar": 1, "dy": 0}, identifier=["event"], chunk_size=256, seed=1)
train, val = stream.split(0.25)
model = torch.nn.Sequential(torch.nn.Linear(stream.dim, p["hidden"]), torch.nn.ReLU(), torch.nn.Linear(p["hidden"], 1))
opt = torch.optim.Adam(model.parameters(), lr=0.02)
loss_fn = torch.nn.BCEWithLogitsLoss()
loader = torch_loader(train, batch_size=32)
for epoch in range(6):
    loader.dataset.set_epoch(epoch)
    for x, y in loader:
        opt.zero_grad()
        loss_fn(model(x).reshape(-1), y).backward()
        opt.step()
with torch.no_grad():
    b = val.whole()
    out = model(torch.from_numpy(b.x)).reshape(-1)
    y = torch.from_numpy(b.y)
    vloss = float(loss_fn(out, y))
    acc = float(((out > 0).float() == y).float().mean())
sdk.report(vloss, metrics={"accuracy": acc, "specs": stream.specs_source, "events": stream.num_events,
                           "val_events": len(b), "signal": float(b.y.sum()), "columns": stream.columns})
"""


MODEL = """
import torch

def model(idim, hidden=8):
    return torch.nn.Sequential(torch.nn.Linear(idim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
"""


def test_hpo_tasks_train_on_a_signal_background_pair(live_server, start_agent, tmp_path):
    """Two tasks on one agent: a payload using sdk.training_data() (two points), and
    ``phpo data train`` itself as the payload with the point in params.json (one point)."""
    sb = sandbox_upload(live_server, {"train.py": PAYLOAD})
    spec = {
        "evaluationExec": f"{PY} train.py",
        "sandbox": str(sb),
        "optimizer": "grid",
        "searchSpace": {"params": {"hidden": {"type": "int", "low": 4, "high": 5}}},
        "maxPoints": 2,
        "nParallelEvaluation": 2,
        "trainingFiles": [SIGNAL, BACKGROUND],
    }
    tid = submit(live_server, spec)
    phpo = Path(PY).parent / "phpo"
    sb2 = sandbox_upload(live_server, {"model.py": textwrap.dedent(MODEL), "labels.txt": "1\n0\n"})
    spec2 = {
        "evaluationExec": f"{phpo} data train --labels labels.txt --model model.py --params params.json",
        "evaluationInput": "params.json",
        "sandbox": str(sb2),
        "optimizer": "grid",
        "searchSpace": {
            "params": {
                "epochs": {"type": "int", "low": 4, "high": 4},
                "lr": {"type": "categorical", "choices": [0.02]},
            }
        },
        "maxPoints": 1,
        "nParallelEvaluation": 1,
        "trainingFiles": [SIGNAL, BACKGROUND],
    }
    tid2 = submit(live_server, spec2)
    agent = start_agent(live_server, "--slots", "2", env={"PHPO_DATA_CACHE": str(tmp_path / "data-cache")})
    t = wait_task(live_server, tid, agents=(agent,), timeout=240)
    assert t["state"] == "finished", t
    pts = get_points(live_server, tid)
    assert [p["state"] for p in pts] == ["evaluated", "evaluated"], pts
    m = [p["metrics"] for p in pts]
    # trained on both files: 701 events, a quarter of each file held out (50 tt̄ + 125 DY)
    assert all(x["events"] == 701 and x["val_events"] == 175 and x["signal"] == 50 for x in m), m
    assert "Jet_pt_0" in m[0]["columns"] and "event" not in m[0]["columns"]
    # it learned something: better than always answering "background" (175 - 50) / 175
    assert all(x["accuracy"] > 125 / 175 for x in m), m
    assert all(0 < p["loss"] < 0.6 for p in pts), [p["loss"] for p in pts]
    # the specs were computed once for the task (its two jobs ran side by side: one computed
    # them, the other waited on the lock and read them)
    assert sorted(x["specs"] for x in m) == ["cache", "computed"], m

    t2 = wait_task(live_server, tid2, agents=(agent,), timeout=240)
    pts2 = get_points(live_server, tid2)
    assert t2["state"] == "finished", (t2, pts2, agent.log()[-3000:])
    (p,) = pts2
    assert p["state"] == "evaluated" and 0 < p["loss"] < 0.69, p
    assert p["metrics"]["framework"] == "torch" and p["metrics"]["events"] == 701, json.dumps(p["metrics"])
    # one specs file per set of reading options (the two tasks name other identifier branches)
    assert len(list((tmp_path / "data-cache").glob("specs-*.json"))) == 2
