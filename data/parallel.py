"""Chunks made in worker processes: ``Stream(workers=N)`` with N of 2 or more.

Worker ``w`` of ``N`` takes the epoch's chunks ``w, w+N, ...``: it reads them (decompression and
uproot's unpacking), assembles them (normalised, padded, masked) and puts their events in the
shuffled order, all in its own process, so N workers keep N cores busy. It writes the finished
matrix and mask into a block of memory shared with the calling process and waits until that
block has been used before it writes the next chunk there (it reads and assembles the next one
meanwhile). The calling process only cuts batches out of the block (a contiguous copy each),
in the epoch's chunk order: the chunks and batches are exactly those of ``workers=1``.

The workers are forked from the calling process, as PyTorch's ``DataLoader`` does on Linux (no
module is imported again, nothing needs pickling); each opens its own readers. Where a process
cannot have children (a ``DataLoader`` worker is a daemon), and off Linux (fork is not safe on
macOS), the chunks are made in the calling process instead, with a warning. A worker that fails
raises its error here (a :class:`DataError` names the file and branch as in one process); one
that dies is reported with its exit code, never waited for forever.
"""

from __future__ import annotations

import contextlib
import mmap
import multiprocessing as mp
import queue
import sys
import traceback
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import DataError

if TYPE_CHECKING:
    from .chunks import Chunk, Stream

POLL_S = 1.0  # how often a wait for a worker checks that it is still alive


def usable() -> str | None:
    """Why chunks cannot be made in worker processes here, or None when they can."""
    if not sys.platform.startswith("linux") or "fork" not in mp.get_all_start_methods():
        return f"the workers are forked, which only Linux does safely (this is {sys.platform})"
    if mp.current_process().daemon:
        return "this is a daemon process (a DataLoader worker?), which cannot have children"
    return None


class _Block:
    """A chunk's matrix and mask in memory shared with a forked worker (anonymous, MAP_SHARED:
    nothing to clean up if either side dies)."""

    def __init__(self, rows: int, dim: int, with_mask: bool):
        nx = rows * dim * 4
        self.mem = mmap.mmap(-1, max(1, nx + (rows * dim if with_mask else 0)))
        self.x = np.frombuffer(self.mem, dtype=np.float32, count=rows * dim).reshape(rows, dim)
        self.mask = (
            np.frombuffer(self.mem, dtype=np.uint8, count=rows * dim, offset=nx).reshape(rows, dim)
            if with_mask
            else None
        )

    def close(self) -> None:
        self.x = self.mask = None  # type: ignore[assignment]
        with contextlib.suppress(BufferError):  # a view still alive: the mapping goes with it
            self.mem.close()


def _work(stream: Stream, mine: list, epoch: int, block: _Block, free, out) -> None:
    """A worker's life: each of its chunks made, then written into ``block`` once it is free."""
    from .readers import open_reader

    stream._readers = {
        i: open_reader(f, tree=stream.tree, redirector=stream.redirector) for i, f in enumerate(stream.files)
    }
    try:
        for k, pieces in mine:
            chunk, order = stream._make(
                pieces, stream._read_pieces(pieces), stream._order(epoch, k, pieces), work=True
            )
            n = len(chunk)
            free.acquire()
            y, ids, source = chunk.y, chunk.ids, chunk.source
            if block.mask is not None:
                chunk._mask(slice(0, n) if order is None else order, out=block.mask[:n], dtype=np.uint8)
            if order is None:
                block.x[:n] = chunk.x
            else:
                np.take(chunk.x, order, axis=0, out=block.x[:n], mode="clip")  # clip: not buffered
                y = None if y is None else np.take(y, order)
                ids = {key: np.take(v, order) for key, v in ids.items()}
                source = np.take(source, order)
            out.put(("chunk", k, n, y, ids, source))
        out.put(("end",))
    except BaseException as e:  # noqa: BLE001 - every failure goes to the caller, whatever it is
        if isinstance(e, DataError):
            out.put(("data_error", e))
        else:
            out.put(("error", f"{type(e).__name__}: {e}", traceback.format_exc()))
    finally:
        for r in stream._readers.values():
            r.close()


def chunks_in_workers(stream: Stream, mine: list, epoch: int) -> Iterator[tuple[Chunk, Any]]:
    """(chunk, release) of each of ``mine`` (``(k, pieces)``, in the epoch's order): the chunk's
    events already in their final order, its ``x`` and ``mask`` (uint8) views of a shared block
    valid until ``release()`` is called, which the caller must do before asking for the next."""
    from .chunks import Chunk

    ctx = mp.get_context("fork")
    n_workers = min(stream.workers, len(mine))
    rows = max(sum(b - a for _, a, b in pieces) for _, pieces in mine)
    blocks = [_Block(rows, stream.dim, stream.mask_kind is not None) for _ in range(n_workers)]
    frees = [ctx.Semaphore(1) for _ in range(n_workers)]
    outs = [ctx.Queue() for _ in range(n_workers)]
    procs = [
        ctx.Process(
            target=_work,
            args=(stream, mine[w::n_workers], epoch, blocks[w], frees[w], outs[w]),
            name=f"phpo-data-{w}",
            daemon=True,
        )
        for w in range(n_workers)
    ]
    with warnings.catch_warnings():  # Python 3.12+ warns of fork with threads; DataLoader does the same
        warnings.simplefilter("ignore", DeprecationWarning)
        for p in procs:
            p.start()
    try:
        for pos in range(len(mine)):
            w = pos % n_workers
            msg = _next(outs[w], procs[w])
            if msg[0] == "data_error":
                raise msg[1]
            if msg[0] == "error":
                raise DataError(f"data worker {w} failed: {msg[1]}\n{msg[2]}")
            _, k, n, y, ids, source = msg
            b = blocks[w]
            mask = None if b.mask is None else b.mask[:n]
            yield Chunk(b.x[:n], mask, y, ids, source), frees[w].release
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        for p in procs:
            p.join(5)
        for q in outs:
            q.close()
            q.cancel_join_thread()
        for b in blocks:
            b.close()


def _next(q, proc) -> tuple:
    """The worker's next message; a worker that died without a word is an error, not a hang."""
    while True:
        try:
            return q.get(timeout=POLL_S)
        except queue.Empty:
            if not proc.is_alive():
                try:  # its last words may have arrived just now
                    return q.get(timeout=0.1)
                except queue.Empty:
                    raise DataError(
                        f"data worker {proc.name} (pid {proc.pid}) died with exit code {proc.exitcode} "
                        "before it handed over its chunk"
                    ) from None
