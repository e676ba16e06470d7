"""A Horovod payload: one phpo point trained by several processes (``--launcher horovodrun``).

Started by ``horovodrun -np N`` (the agent's ``--launcher horovodrun --nProcessesPerPoint N`` does
it): every rank trains on its shard of scikit-learn's digits, Horovod averages the gradients
(Gloo on the CPU), rank 0 alone checkpoints and reports. Horovod must be built with PyTorch and
Gloo (``make horovod``). Hyperparameters: ``lr``, ``hidden``, ``epochs``, ``batch_size`` (global).
"""

from __future__ import annotations

import os

import horovod.torch as hvd
import torch
from sklearn.datasets import load_digits
from torch import nn

from phpo.evaluation_container import sdk


def main() -> None:
    hvd.init()
    torch.set_num_threads(1)
    rank, world = hvd.rank(), hvd.size()
    params = sdk.load_point()
    lr = float(params.get("lr", 0.05))
    hidden = int(params.get("hidden", 64))
    epochs = int(params.get("epochs", 10))
    batch = max(1, int(params.get("batch_size", 64)) // world)

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    n_val = len(x) // 5
    val, train = order[:n_val], order[n_val:]
    shard = train[rank::world]  # this rank's part of the training set

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    start = 0
    ckpt = sdk.latest_checkpoint() if rank == 0 else None
    if ckpt is not None and (ckpt / "model.pt").exists():
        state = torch.load(ckpt / "model.pt")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["epoch"] + 1
    # rank 0's weights, optimizer state and epoch for every rank
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(opt, root_rank=0)
    start = int(hvd.broadcast_object(start, root_rank=0))
    opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())

    loss_fn = nn.CrossEntropyLoss()
    val_loss = float("nan")
    for epoch in range(start, epochs):
        perm = shard[torch.randperm(len(shard), generator=torch.Generator().manual_seed(epoch))]
        for i in range(0, len(perm), batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
        with torch.no_grad():
            val_loss = loss_fn(model(x[val]), y[val]).item()
        go = 1
        if rank == 0:
            d = sdk.checkpoint_dir()
            torch.save(
                {"model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch}, d / "model.tmp"
            )
            os.replace(d / "model.tmp", d / "model.pt")
            go = int(sdk.report_intermediate(epoch, val_loss))
        if not hvd.broadcast_object(go, root_rank=0):  # pruned: every rank stops
            break
    local_ranks = hvd.allgather_object(hvd.local_rank())  # every rank takes part
    if rank == 0:
        sdk.report(val_loss, metrics={"world_size": world, "start_epoch": start, "local_ranks": local_ranks})
    hvd.shutdown()


if __name__ == "__main__":
    main()
