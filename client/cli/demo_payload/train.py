"""phpo demo payload: train a small neural network on real handwritten digits, epoch by epoch.

It speaks the upstream evaluation contract (docs/payloads.md) with plain files, no phpo import:
reads the point from ``input.json``, writes ``{"status": 0, "loss": ...}`` to ``output.json``.

- Data: scikit-learn's bundled ``load_digits`` (1,797 real 8x8 handwritten digits, UCI
  "Optical Recognition of Handwritten Digits"); shipped inside the scikit-learn wheel, no download.
- Model: ``MLPClassifier`` trained one epoch at a time with ``partial_fit``.
- Checkpoint: after every epoch the model is pickled to ``checkpoint/model.pkl`` (the task sets
  ``--checkPointToSave checkpoint``); when the file is there at start, e.g. because the job was
  lost and the point is retried on another agent, training resumes from it instead of epoch 0.
- Loss: the validation error (1 - accuracy) on a fixed, stratified 30 % hold-out.

Run by hand: ``echo '{"learning_rate_init": 0.01, "hidden_units": 64}' > input.json; python train.py``.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import time
from pathlib import Path

# the task's evaluationInput/evaluationOutput (defaults input.json/output.json) may be passed on
# the command line: python train.py [INPUT [OUTPUT]]
INPUT = sys.argv[1] if len(sys.argv) > 1 else "input.json"
OUTPUT = sys.argv[2] if len(sys.argv) > 2 else "output.json"
CHECKPOINT = Path("checkpoint") / "model.pkl"
DEFAULTS = {
    "learning_rate_init": 1e-3,
    "hidden_units": 64,
    "n_layers": 1,
    "alpha": 1e-4,
    "batch_size": 64,
    "activation": "relu",
    "epochs": 40,
}


def write_output(**result) -> None:
    tmp = OUTPUT + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(result, fh)
    os.replace(tmp, OUTPUT)


def save_checkpoint(state: dict) -> None:
    """Atomic: the agent may tar the directory at any moment, it must never see half a file."""
    CHECKPOINT.parent.mkdir(exist_ok=True)
    tmp = CHECKPOINT.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        pickle.dump(state, fh)
    os.replace(tmp, CHECKPOINT)


def main() -> int:
    try:
        import numpy as np
        from sklearn.datasets import load_digits
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.model_selection import train_test_split
        from sklearn.neural_network import MLPClassifier
    except ImportError as e:
        write_output(status=1, message=f"scikit-learn is needed: pip install 'phpo[demo]' ({e})")
        return 1
    import warnings

    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    with open(INPUT) as fh:
        point = {**DEFAULTS, **json.load(fh)}
    print(f"point: {json.dumps(point)}", flush=True)

    digits = load_digits()
    x = digits.data / 16.0  # pixel intensities 0..16 -> 0..1
    x_train, x_val, y_train, y_val = train_test_split(
        x, digits.target, test_size=0.3, random_state=0, stratify=digits.target
    )
    classes = np.unique(digits.target)

    start_epoch, history = 0, []
    if CHECKPOINT.exists():
        with open(CHECKPOINT, "rb") as fh:
            state = pickle.load(fh)
        if state.get("point") == point:
            model, start_epoch, history = state["model"], state["epoch"], state["history"]
            print(f"resuming from checkpoint at epoch {start_epoch}", flush=True)
    if start_epoch == 0:
        model = MLPClassifier(
            hidden_layer_sizes=(int(point["hidden_units"]),) * int(point["n_layers"]),
            activation=str(point["activation"]),
            alpha=float(point["alpha"]),
            learning_rate_init=float(point["learning_rate_init"]),
            batch_size=int(point["batch_size"]),
            random_state=0,
        )

    rng = np.random.default_rng(start_epoch)
    t0 = time.time()
    for epoch in range(start_epoch, int(point["epochs"])):
        order = rng.permutation(len(x_train))
        model.partial_fit(x_train[order], y_train[order], classes=classes)
        err = 1.0 - float(model.score(x_val, y_val))
        history.append(err)
        save_checkpoint({"point": point, "model": model, "epoch": epoch + 1, "history": history})
        print(f"epoch {epoch + 1:3d}  validation error {err:.4f}", flush=True)

    loss = history[-1]
    if not np.isfinite(loss):
        write_output(status=1, message="training diverged (non-finite validation error)")
        return 1
    write_output(
        status=0,
        loss=loss,
        metrics={
            "val_accuracy": 1.0 - loss,
            "epochs": len(history),
            "resumed_from_epoch": start_epoch,
            "best_epoch_error": min(history),
            "train_seconds": round(time.time() - t0, 3),
        },
    )
    print(f"done: validation error {loss:.4f} after {len(history)} epochs", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
