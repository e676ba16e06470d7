"""Micro-batching: concurrent requests to one model become one call of the model.

The model runs in a worker thread, one call at a time per model (so the event loop keeps taking
requests). A request that finds the model idle goes to it at once, alone: no waiting at low
load. Requests that arrive while the model is busy wait in its queue, and when the model is
free again everything waiting (up to ``max_rows`` rows, default 1024) goes to it as one batch:
the busier the service, the larger the batches. ``window_ms`` (default 0) makes a batch wait up
to that many milliseconds more for further requests before it goes (fewer, larger calls at the
price of that much latency). Each caller gets back exactly its own rows, in its order.
``enabled=False`` turns batching off: every request is its own call of the model.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class _Pending:
    rows: np.ndarray
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        window_ms: float,
        max_rows: int,
        on_batch: Callable[[int, int], None] | None = None,
        enabled: bool = True,
    ):
        self.predict = predict
        self.enabled = enabled
        self.window = window_ms / 1000.0
        self.max_rows = max_rows
        self.on_batch = on_batch  # (requests, rows) of each call of the model, for /metrics
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()  # one call of the model at a time when batching is off

    async def submit(self, rows: np.ndarray) -> np.ndarray:
        if not self.enabled:
            async with self._lock:
                out = await asyncio.to_thread(self.predict, rows)
            if self.on_batch:
                self.on_batch(1, len(rows))
            return out
        if self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = asyncio.create_task(self._loop())
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(rows, fut))
        return await fut

    async def _loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            n = len(batch[0].rows)
            while n < self.max_rows and not self._queue.empty():  # all that waited while the model was busy
                p = self._queue.get_nowait()
                batch.append(p)
                n += len(p.rows)
            deadline = loop.time() + self.window
            while n < self.max_rows and self.window > 0:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    p = await asyncio.wait_for(self._queue.get(), left)
                except TimeoutError:
                    break
                batch.append(p)
                n += len(p.rows)
            await self._run(batch, n)

    async def _run(self, batch: list[_Pending], n: int) -> None:
        try:
            x = batch[0].rows if len(batch) == 1 else np.concatenate([p.rows for p in batch])
            out = await asyncio.to_thread(self.predict, x)
            if len(out) != n:
                raise RuntimeError(f"the model answered {len(out)} rows for {n}")
        except Exception as e:  # noqa: BLE001 - every caller of the batch gets the error
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(e)
            return
        if self.on_batch:
            self.on_batch(len(batch), n)
        i = 0
        for p in batch:
            k = len(p.rows)
            if not p.future.done():  # a caller that went away
                p.future.set_result(out[i : i + k])
            i += k

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
