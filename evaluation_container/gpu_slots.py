"""Job slots and the GPUs each one owns.

The GPUs are split into fixed groups, one per slot, once at start: a job runs in a free slot and
gets exactly that slot's GPUs as ``CUDA_VISIBLE_DEVICES``. Two running jobs therefore never see
the same GPU, unless the user asked for sharing (``--share-gpus``) *and* there are more slots
than GPUs; without sharing, extra slots are dropped (a warning says so) rather than run jobs
on GPUs already in use.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from phpo.schemas.jobs import GPUInfo

log = logging.getLogger("phpo.agent.slots")


@dataclass(frozen=True)
class Slot:
    index: int
    gpus: tuple[GPUInfo, ...] = field(default_factory=tuple)
    # False: the agent manages no GPUs (``--gpus auto`` found none), leave the environment alone
    assigns_gpus: bool = False

    @property
    def gpu_indices(self) -> list[int] | None:
        return [g.index for g in self.gpus] if self.assigns_gpus else None

    @property
    def cuda_visible_devices(self) -> str | None:
        idx = self.gpu_indices
        return None if idx is None else ",".join(str(i) for i in idx)


def plan_slots(slots: int, gpus: list[GPUInfo] | None, share: bool = False) -> list[Slot]:
    """The slots and their GPU groups.

    - ``gpus is None``: no GPU management, ``slots`` plain slots.
    - ``gpus == []``: ``slots`` slots, each with no GPU (``CUDA_VISIBLE_DEVICES=""``).
    - ``slots <= len(gpus)``: the GPUs split into ``slots`` contiguous groups as even as possible
      (5 GPUs, 2 slots: ``0,1,2`` and ``3,4``).
    - ``slots > len(gpus)``: with ``share``, slot ``i`` gets GPU ``i % len(gpus)``; without,
      only ``len(gpus)`` slots, one GPU each.
    """
    if slots < 1:
        raise ValueError(f"--slots must be at least 1, got {slots}")
    if gpus is None:
        return [Slot(i) for i in range(slots)]
    if not gpus:
        return [Slot(i, (), True) for i in range(slots)]
    n = len(gpus)
    if slots > n:
        if share:
            return [Slot(i, (gpus[i % n],), True) for i in range(slots)]
        log.warning(
            "--slots %d exceeds the %d GPU(s) and --share-gpus is off: running at most %d job(s) at a time",
            slots,
            n,
            n,
        )
        slots = n
    out: list[Slot] = []
    base, extra = divmod(n, slots)
    start = 0
    for i in range(slots):
        size = base + (1 if i < extra else 0)
        out.append(Slot(i, tuple(gpus[start : start + size]), True))
        start += size
    return out


class SlotPool:
    """Thread-safe free list of :class:`Slot`."""

    def __init__(self, slots: list[Slot]):
        self._all = list(slots)
        self._free = list(slots)
        self._lock = threading.Lock()

    @property
    def capacity(self) -> int:
        return len(self._all)

    def take(self) -> Slot | None:
        with self._lock:
            return self._free.pop(0) if self._free else None

    def release(self, slot: Slot) -> None:
        with self._lock:
            if slot in self._free:
                raise ValueError(f"slot {slot.index} released twice")
            self._free.append(slot)
            self._free.sort(key=lambda s: s.index)

    @property
    def busy(self) -> int:
        with self._lock:
            return len(self._all) - len(self._free)
