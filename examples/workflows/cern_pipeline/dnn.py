"""Steps 2 and 3 of the pipeline: the 14-feature DNN (hidden layers 50-20-10, 3 outputs), as an
HPO payload (a point: ``lr``, ``batch_size``) and as the training of the best point (the same
script, more epochs). Reads the feature step's Parquet: through phpo.data (``sdk.training_data``) when the task names
the Parquet files as its training data (the HPO step), else with pandas (``--data``, the training
step: a job node has no training files); standardisation is part of the model,
so the served model takes the raw features. Reports the validation cross-entropy as the loss,
the accuracy as a metric, and hands phpo the model (``sdk.save_model``).

    python dnn.py --data /tmp/phpo-cern/features.parquet --epochs 5
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch

from phpo.evaluation_container import sdk

FEATURES = [
    "n_mu",
    "mu1_pt",
    "mu1_eta",
    "mu1_phi",
    "mu2_pt",
    "mu2_eta",
    "mu2_phi",
    "m_mumu",
    "mu_charge",
    "n_jet",
    "jet1_pt",
    "ht",
    "met",
    "n_ele",
]


class Standardise(torch.nn.Module):
    def __init__(self, mean: np.ndarray, std: np.ndarray):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def model(mean: np.ndarray, std: np.ndarray) -> torch.nn.Module:
    return torch.nn.Sequential(
        Standardise(mean, std),
        torch.nn.Linear(14, 50),
        torch.nn.ReLU(),
        torch.nn.Linear(50, 20),
        torch.nn.ReLU(),
        torch.nn.Linear(20, 10),
        torch.nn.ReLU(),
        torch.nn.Linear(10, 3),
    )


def load(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Features (in FEATURES order, as the served model takes them) and labels."""
    if sdk.training_files():
        s = sdk.training_data(label_branch="label", branches=FEATURES, normalise=None)
        xs, ys = zip(*((b.x, b.y) for b in s.batches(1 << 20, epoch=0)), strict=True)
        order = [list(s.columns).index(f) for f in FEATURES]  # phpo.data sorts the columns by name
        return np.concatenate(xs)[:, order].astype(np.float32), np.concatenate(ys).astype(np.int64)
    df = pd.read_parquet(path)
    return df[FEATURES].to_numpy(np.float32), df["label"].to_numpy(np.int64)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", help="the Parquet dataset, when the task has no training files")
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args()
    p = sdk.load_point()
    lr, batch = float(p.get("lr", 1e-3)), int(p.get("batch_size", 64))
    X, y = load(args.data)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(X))
    cut = int(0.8 * len(X))
    tr, va = order[:cut], order[cut:]
    torch.manual_seed(0)
    net = model(X[tr].mean(0), X[tr].std(0) + 1e-6)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    lossf = torch.nn.CrossEntropyLoss()
    xt, yt, xv, yv = (torch.from_numpy(a) for a in (X[tr], y[tr], X[va], y[va]))
    for epoch in range(args.epochs):
        net.train()
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            lossf(net(xt[idx]), yt[idx]).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            val = float(lossf(net(xv), yv))
        if not sdk.report_intermediate(epoch, val):
            break
    with torch.no_grad():
        acc = float((net(xv).argmax(1) == yv).float().mean())
    sdk.save_model(net, input_example=X[:5])
    sdk.report(val, metrics={"accuracy": acc, "epochs": args.epochs})
    print(f"lr {lr} batch {batch}: val loss {val:.4f} accuracy {acc:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
