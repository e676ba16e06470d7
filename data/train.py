"""Training a user's ``model(idim)`` on a :class:`~phpo.data.Stream` (MLaaS4HEP's workflow):
a PyTorch ``nn.Module`` with Adam and binary cross-entropy, or a compiled Keras model with its
own ``fit``. The model gives one output per event: a probability when its last layer is a
sigmoid (Keras: always, as MLaaS4HEP's examples do), else a logit (PyTorch)."""

from __future__ import annotations

import importlib.util
import inspect
import math
import os
import sys
from pathlib import Path
from typing import Any

from .adapters import keras_generator, steps
from .chunks import Stream
from .errors import DataError


def load_model_function(path: str | os.PathLike[str]):
    """The ``model`` function of a ``model.py`` (imported as a module: it is the user's own
    code, run as they wrote it)."""
    path = Path(path)
    if not path.is_file():
        raise DataError("no such model file", str(path))
    spec = importlib.util.spec_from_file_location(f"phpo_user_model_{abs(hash(str(path)))}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    fn = getattr(mod, "model", None)
    if not callable(fn):
        raise DataError("defines no function model(idim)", str(path))
    return fn


def build_model(fn, idim: int, params: dict[str, Any]) -> tuple[Any, list[str]]:
    """``fn(idim, **the params its signature names)`` and the names passed that way (an HPO
    point's model hyperparameters reach the model like this)."""
    sig = inspect.signature(fn)
    takes_all = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    extra = {k: v for k, v in params.items() if k != "idim" and (takes_all or k in sig.parameters)}
    return fn(idim, **extra), list(extra)


def _is_torch(model) -> bool:
    try:
        import torch
    except ImportError:
        return False
    return isinstance(model, torch.nn.Module)


def fit(
    model,
    train: Stream,
    val: Stream | None,
    epochs: int,
    batch_size: int,
    lr: float = 1e-3,
    verbose: int = 0,
    on_epoch=None,
) -> dict[str, Any]:
    """Train and return ``{"loss": validation loss (training loss without validation),
    "accuracy": ..., "history": [...]}``."""
    if _is_torch(model):
        return _fit_torch(model, train, val, epochs, batch_size, lr, verbose, on_epoch)
    if hasattr(model, "fit"):
        return _fit_keras(model, train, val, epochs, batch_size, verbose)
    raise DataError(
        f"model(idim) returned {type(model).__name__}: give a torch.nn.Module or a compiled Keras model"
    )


def _fit_torch(model, train, val, epochs, batch_size, lr, verbose, on_epoch) -> dict[str, Any]:
    import torch

    from .adapters import torch_dataset

    last = list(model.modules())[-1]
    probs = isinstance(last, torch.nn.Sigmoid)
    loss_fn = torch.nn.BCELoss() if probs else torch.nn.BCEWithLogitsLoss()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ds = torch_dataset(train, batch_size)
    history = []

    def evaluate(stream: Stream) -> tuple[float, float]:
        model.eval()
        tot, n, right = 0.0, 0, 0
        with torch.no_grad():
            for b in stream.batches(batch_size, 0):
                x, y = torch.from_numpy(b.x), torch.from_numpy(b.y)
                out = model(x).reshape(-1)
                tot += float(loss_fn(out, y)) * len(y)
                p = out if probs else torch.sigmoid(out)
                right += int(((p > 0.5).float() == y).sum())
                n += len(y)
        model.train()
        return (tot / n, right / n) if n else (math.nan, math.nan)

    for epoch in range(epochs):
        ds.set_epoch(epoch)
        tot, n = 0.0, 0
        for x, y in ds:
            opt.zero_grad()
            loss = loss_fn(model(x).reshape(-1), y)
            loss.backward()
            opt.step()
            tot += loss.item() * len(y)
            n += len(y)
        row = {"epoch": epoch, "train_loss": tot / max(n, 1)}
        if val is not None:
            row["val_loss"], row["val_accuracy"] = evaluate(val)
        history.append(row)
        if verbose:
            print(
                f"epoch {epoch}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"),
                flush=True,
            )
        if on_epoch is not None and on_epoch(epoch, row.get("val_loss", row["train_loss"])) is False:
            break
    last_row = history[-1] if history else {}
    return {
        "loss": last_row.get("val_loss", last_row.get("train_loss", math.nan)),
        "accuracy": last_row.get("val_accuracy"),
        "history": history,
        "framework": "torch",
    }


def _fit_keras(model, train, val, epochs, batch_size, verbose) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if val is not None:
        kw = {"validation_data": keras_generator(val, batch_size), "validation_steps": steps(val, batch_size)}
    h = model.fit(
        keras_generator(train, batch_size),
        steps_per_epoch=steps(train, batch_size),
        epochs=epochs,
        verbose=verbose,
        **kw,
    )
    hist = {k: [float(v) for v in vs] for k, vs in h.history.items()}
    loss = hist.get("val_loss", hist.get("loss", [math.nan]))[-1]
    acc = hist.get("val_accuracy", hist.get("accuracy", [None]))[-1]
    return {"loss": loss, "accuracy": acc, "history": hist, "framework": "keras"}
