"""An evaluation payload using the phpo SDK: reads its point, resumes from a checkpoint when the
agent restored one, reports per-epoch values (the server can stop the point early) and its loss.

Submit with e.g. ``--evaluationExec "python train_with_sdk.py" --checkPointToSave ckpt
--checkPointInterval 30s``; ``x`` and ``lr`` are the search-space parameters.
"""

import json
import os
import time

from phpo.evaluation_container import sdk

EPOCHS = 20

params = sdk.load_point()
state = {"epoch": -1, "loss": 10.0}
ckpt = sdk.latest_checkpoint()
if ckpt is not None:  # a retried point: continue where the last attempt stopped
    with open(ckpt / "state.json") as f:
        state = json.load(f)

for epoch in range(state["epoch"] + 1, EPOCHS):
    time.sleep(0.1)  # the "training"
    state = {"epoch": epoch, "loss": (params.get("x", 0) - 2) ** 2 + 1.0 / (epoch + 1)}
    d = sdk.checkpoint_dir()
    with open(d / "state.tmp", "w") as f:
        json.dump(state, f)
    os.replace(d / "state.tmp", d / "state.json")  # never leave a torn checkpoint
    if not sdk.report_intermediate(epoch, state["loss"]):
        break  # pruned by the server

sdk.report(state["loss"], metrics={"epochs": state["epoch"] + 1, "training_files": len(sdk.training_files())})
