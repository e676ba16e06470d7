"""A PyTorch DistributedDataParallel payload: one phpo point trained by several processes.

Started by a launcher (``torchrun --nproc-per-node N ddp_train.py``; the agent's
``--launcher torchrun`` does the same for you): every rank trains on its shard of scikit-learn's
digits (it ships with scikit-learn, no download), gradients are averaged across the ranks, rank 0
alone writes checkpoints, reports per-epoch validation losses and the final loss. A stop
decision of the server (pruning) reaches every rank through a broadcast, so all ranks end
together.

Hyperparameters (the point): ``lr``, ``hidden``, ``epochs``, ``batch_size`` (global, split over
the ranks). Backend: NCCL when every rank has a GPU, gloo otherwise.
"""

from __future__ import annotations

import json
import os
import time

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from phpo.evaluation_container import sdk


def data() -> tuple[TensorDataset, TensorDataset]:
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(x), generator=g)
    n_val = len(x) // 5
    val, train = order[:n_val], order[n_val:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])


def main() -> None:
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    # the agent gives each rank one GPU (CUDA_VISIBLE_DEVICES); with all of them visible, LOCAL_RANK's
    device = torch.device("cuda", local_rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)

    params = sdk.load_point()
    lr = float(params.get("lr", 0.05))
    hidden = int(params.get("hidden", 64))
    epochs = int(params.get("epochs", 10))
    batch = max(1, int(params.get("batch_size", 64)) // world)

    torch.manual_seed(0)  # the same initial weights on every rank
    model = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    # a retried point resumes from rank 0's checkpoint: every rank takes rank 0's state (an agent
    # that joined an elastic point later holds an older checkpoint, or none)
    state = None
    ckpt = sdk.latest_checkpoint() if rank == 0 else None
    if ckpt is not None and (ckpt / "model.pt").exists():
        state = torch.load(ckpt / "model.pt", map_location="cpu")
    box = [state]
    dist.broadcast_object_list(box, src=0)
    state = box[0]
    start, worlds = 0, []
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start, worlds = state["epoch"] + 1, state.get("worlds", [])
    worlds = [*worlds, world]  # the world size of each (re)start: an elastic point grows and shrinks
    ddp = DistributedDataParallel(model)

    train, val = data()
    sampler = DistributedSampler(train, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(train, batch_size=batch, sampler=sampler)
    loss_fn = nn.CrossEntropyLoss()
    val_loss = float("nan")
    times = []
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        ddp.train()
        for xb, yb in loader:
            opt.zero_grad()
            loss_fn(ddp(xb.to(device)), yb.to(device)).backward()
            opt.step()
        times.append(time.perf_counter() - t0)
        with torch.no_grad():
            xv, yv = val.tensors
            val_loss = loss_fn(model(xv.to(device)), yv.to(device)).item()
        go = torch.tensor([1], device=device)
        if rank == 0:
            d = sdk.checkpoint_dir()
            torch.save(
                {"model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch, "worlds": worlds},
                d / "model.tmp",
            )
            os.replace(d / "model.tmp", d / "model.pt")  # never a torn checkpoint
            go[0] = int(sdk.report_intermediate(epoch, val_loss))
        dist.broadcast(go, src=0)  # every rank stops when the server pruned the point
        if not go.item():
            break

    if rank == 0:
        sdk.report(
            val_loss,
            metrics={
                "world_size": world,
                "start_epoch": start,
                "world_sizes": worlds,
                "epoch_seconds": times,
            },
        )
        if os.environ.get("PHPO_DDP_TIMES"):  # the scaling benchmark reads the epoch times
            with open(os.environ["PHPO_DDP_TIMES"], "w") as f:
                json.dump({"world_size": world, "epoch_seconds": times}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
