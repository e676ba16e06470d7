"""A :class:`~phpo.data.Stream` for PyTorch, Keras/TensorFlow and plain numpy.

loader = torch_loader(stream, batch_size=256)   # Stream(..., workers=2) for 2 cores, not num_workers
for epoch in range(n):
    loader.dataset.set_epoch(epoch)
    for x, y in loader: ...

model.fit(keras_generator(stream, 256), steps_per_epoch=steps(stream, 256), epochs=n)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from .chunks import Stream


def numpy_batches(
    stream: Stream, batch_size: int, epoch: int = 0, with_mask: bool = False
) -> Iterator[tuple]:
    """``(x, y)`` or ``(x, mask, y)`` numpy batches of one epoch."""
    for b in stream.batches(batch_size, epoch):
        yield (b.x, b.mask, b.y) if with_mask else (b.x, b.y)


def steps(stream: Stream, batch_size: int) -> int:
    """Batches per epoch (an upper bound when chunks do not split evenly into batches)."""
    return sum(math.ceil(sum(b - a for _, a, b in c) / batch_size) for c in stream.plan(0))


def _torch_dataset_class():
    import torch
    from torch.utils.data import IterableDataset, get_worker_info

    class StreamDataset(IterableDataset):
        """Batches as tensors; with DataLoader workers, worker ``w`` of ``W`` makes chunks
        ``w, w+W, ...`` of the epoch (no chunk is read twice). Use ``DataLoader(batch_size=None)``:
        the batches are made here, whole."""

        def __init__(self, stream: Stream, batch_size: int, with_mask: bool = False, drop_last: bool = False):
            self.stream, self.batch_size, self.with_mask, self.drop_last = (
                stream,
                batch_size,
                with_mask,
                drop_last,
            )
            self.epoch = 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = int(epoch)

        def __iter__(self):
            info = get_worker_info()
            w, n = (info.id, info.num_workers) if info is not None else (0, 1)
            for b in self.stream.batches(self.batch_size, self.epoch, w, n, self.drop_last):
                x = torch.from_numpy(b.x)
                y = torch.from_numpy(b.y) if b.y is not None else torch.empty(0)
                if self.with_mask:
                    yield x, torch.from_numpy(b.mask), y
                else:
                    yield x, y

    return StreamDataset


def torch_dataset(stream: Stream, batch_size: int, with_mask: bool = False, drop_last: bool = False):
    """A ``torch.utils.data.IterableDataset`` of ``(x, y)`` (or ``(x, mask, y)``) batches."""
    return _torch_dataset_class()(stream, batch_size, with_mask, drop_last)


def torch_loader(
    stream: Stream,
    batch_size: int,
    num_workers: int = 0,
    with_mask: bool = False,
    drop_last: bool = False,
    **kw: Any,
):
    """A ``DataLoader`` over :func:`torch_dataset`; ``loader.dataset.set_epoch(e)`` picks the epoch."""
    from torch.utils.data import DataLoader

    return DataLoader(
        torch_dataset(stream, batch_size, with_mask, drop_last),
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=False,
        **kw,
    )


def keras_generator(stream: Stream, batch_size: int, epochs: int | None = None, with_mask: bool = False):
    """An endless (or ``epochs``-long) generator of numpy ``(x, y)`` batches for ``model.fit``
    (``steps_per_epoch=steps(stream, batch_size)``). Needs no TensorFlow itself."""
    epoch = 0
    while epochs is None or epoch < epochs:
        for b in stream.batches(batch_size, epoch):
            yield ((b.x, b.mask), b.y) if with_mask else (b.x, b.y)
        epoch += 1


def tf_dataset(stream: Stream, batch_size: int, epoch: int = 0):
    """A ``tf.data.Dataset`` of one epoch's ``(x, y)`` batches (needs tensorflow)."""
    import tensorflow as tf

    spec = (
        tf.TensorSpec(shape=(None, stream.dim), dtype=tf.float32),
        tf.TensorSpec(shape=(None,), dtype=tf.float32),
    )
    return tf.data.Dataset.from_generator(
        lambda: numpy_batches(stream, batch_size, epoch), output_signature=spec
    )
