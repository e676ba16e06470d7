"""The evaluation agent: lease jobs from the server, run them, report, repeat.

One main thread leases a job whenever a slot is free (a long poll: the server answers as soon
as a job is ready, or after ``poll_interval``); each leased job runs in its own thread
(:class:`JobRunner`) with a heartbeat thread beside it. Results are reported as soon as a point
is done (the server can refill the search at once); the last point's result goes with
``complete``, which also leases the slot's next job in the same round trip, so a slot is
refilled one request after its payload exits (and its log files, if any, are uploaded). What the server
cannot take right now goes to the on-disk :class:`~.outbox.Outbox`.

Stopping (SIGTERM/SIGINT): stop acquiring, let running jobs finish for ``grace_seconds``, then
stop their payloads, upload a last checkpoint of each and hand their points back
(``fail(retry=True)``). A second signal skips the grace period.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phpo.client.agent_api import AgentAPI, is_transient
from phpo.client.errors import AuthError
from phpo.schemas.archives import ArchiveLimits
from phpo.schemas.jobs import MAX_ACQUIRE_WAIT_S, AcquireRequest, Job, JobKind
from phpo.schemas.payload import CONTROL_FILE

from .executors import Executors
from .gpu_slots import Slot, SlotPool, plan_slots
from .job_runner import JobRunner
from .launchers import free_loopback_port
from .outbox import Outbox
from .reporting import META_MAX_BYTES
from .resources import base_resources
from .results import (
    OUTPUT_MAX_BYTES,
    STDERR_TAIL_BYTES,
    TIMEOUT_STATUS,
    Outcome,
    read_output,
    tail_text,
    with_stderr,
)
from .runners.base import ExecutorError, PayloadUser
from .supervision import heartbeat_request, parse_intermediate_line
from .workdir import SandboxCache

__all__ = [
    "CONTROL_FILE",
    "META_MAX_BYTES",
    "OUTPUT_MAX_BYTES",
    "STDERR_TAIL_BYTES",
    "TIMEOUT_STATUS",
    "Agent",
    "AgentConfig",
    "JobRunner",
    "Outcome",
    "default_agent_name",
    "heartbeat_request",
    "parse_intermediate_line",
    "read_output",
    "tail_text",
    "with_stderr",
]

log = logging.getLogger("phpo.agent")


def default_agent_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class AgentConfig:
    site: str
    workdir: Path
    slots: int = 1
    name: str = field(default_factory=default_agent_name)
    gpus: list | None = None  # list[GPUInfo]; None = no GPU management
    share_gpus: bool = False
    executor: str = (
        "subprocess"  # subprocess (containers if a docker engine answers) | docker | podman | dask
    )
    scheduler: str | None = None  # --executor dask: the Dask scheduler's address
    rendezvous_host: str = "127.0.0.1"  # where this agent hosts a multi-agent point's rendezvous
    docker_url: str | None = None
    container_network: str = "none"
    kinds: list[JobKind] = field(default_factory=lambda: [JobKind.evaluation, JobKind.steering])
    poll_interval: float = 2.0
    once: bool = False
    grace_seconds: float = 30.0
    kill_grace: float = 5.0
    max_checkpoint_bytes: int = 10240 * 2**20
    max_log_bytes: int = 10 * 2**20
    retry_seconds: float = 60.0
    outbox_interval: float = 10.0
    keep_workdirs: bool = False
    max_unpack_bytes: int = 10240 * 2**20  # a sandbox or checkpoint, all its files together
    max_unpack_files: int = 100_000
    payload_user: PayloadUser | None = None  # subprocess payloads run as this account

    @property
    def unpack_limits(self) -> ArchiveLimits:
        return ArchiveLimits(
            max_members=self.max_unpack_files,
            max_member_bytes=self.max_unpack_bytes,
            max_total_bytes=self.max_unpack_bytes,
        )


class Agent:
    def __init__(self, cfg: AgentConfig, api: AgentAPI):
        self.cfg = cfg
        self.api = api
        self.workdir = Path(cfg.workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.stopping = threading.Event()
        self.hard_stop = threading.Event()
        self.wake = threading.Event()
        self.stop_requested_at: float | None = None
        self.pool = SlotPool(plan_slots(cfg.slots, cfg.gpus, cfg.share_gpus))
        self.outbox = Outbox(self.workdir / "outbox")
        if cfg.payload_user is not None:
            self._protect_workdir()
        self.runners: dict[int, JobRunner] = {}
        self._runners_lock = threading.Lock()
        self.sandboxes = SandboxCache(api, self.workdir / "cache")
        self.executors = Executors(cfg, self.workdir)
        self.jobs_done = 0
        self.fatal: str | None = None

    def _protect_workdir(self) -> None:
        """Payloads of another account may pass through to their run directories, but not read
        the agent's cache (every task's sandbox) or outbox (every job's results)."""
        for d, mode in (
            (self.workdir, 0o711),
            (self.workdir / "jobs", 0o711),
            (self.workdir / "cache", 0o700),
            (self.outbox.dir, 0o700),
        ):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(mode)

    # --- setup -------------------------------------------------------------------------

    def setup_container_runtime(self) -> None:
        """Find the container engine this agent can use; raises ExecutorError when one was
        asked for (``--executor docker|podman``) and does not work."""
        self.executors.setup()
        container = self.executors.container
        self.resources = base_resources([container.name] if container else [])

    def acquire_request(self, slot: Slot, wait_s: float = 0.0) -> AcquireRequest:
        res = self.resources.model_copy(update={"gpus": list(slot.gpus)})
        return AcquireRequest(
            agent=self.cfg.name,
            site=self.cfg.site,
            resources=res,
            kinds=self.cfg.kinds,
            wait_s=min(max(0.0, wait_s), MAX_ACQUIRE_WAIT_S),
            rendezvous_endpoint=f"{self.cfg.rendezvous_host}:{free_loopback_port(self.cfg.rendezvous_host)}",
        )

    def next_request(self, slot: Slot) -> AcquireRequest | None:
        """What a finishing job asks for its slot in ``complete`` (None: the slot is released)."""
        if self.cfg.once or self.stopping.is_set() or self.fatal:
            return None
        return self.acquire_request(slot, wait_s=self.cfg.poll_interval)

    # --- signals -----------------------------------------------------------------------

    def request_stop(self, signum: int | None = None, _frame: Any = None) -> None:
        if self.stopping.is_set():
            log.warning("second stop signal: stopping running jobs now")
            self.hard_stop.set()
        else:
            log.info(
                "stop requested (%s): no new jobs; %d running job(s) get %.0f s to finish",
                signal.Signals(signum).name if signum else "api",
                len(self.runners),
                self.cfg.grace_seconds,
            )
            self.stop_requested_at = time.monotonic()
            self.stopping.set()
        self.wake.set()

    def install_signal_handlers(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)

    # --- main loop ---------------------------------------------------------------------

    def run(self) -> int:
        self.install_signal_handlers()
        try:
            self.setup_container_runtime()
        except ExecutorError as e:
            log.error("%s", e)
            return 2
        log.info(
            "agent %s at site %s: %d slot(s), workdir %s, resources %s",
            self.cfg.name,
            self.cfg.site,
            self.pool.capacity,
            self.workdir,
            self.resources.model_dump(exclude={"cpu_flags"}),
        )
        rc = 1
        try:
            self.flush_outbox()
            rc = self._loop()
            return rc
        finally:
            self.drain()
            self.close()
            log.info("agent %s stopped after %d job(s) (exit %d)", self.cfg.name, self.jobs_done, rc)

    def flush_outbox(self) -> None:
        if len(self.outbox):
            try:
                self.outbox.flush(self.api)
            except Exception as e:  # noqa: BLE001
                log.warning("outbox flush failed: %s", e)

    def _loop(self) -> int:
        last_flush = time.monotonic()
        self._failures = 0
        taken = 0
        while not self.stopping.is_set():
            now = time.monotonic()
            if now - last_flush >= self.cfg.outbox_interval:
                self.flush_outbox()
                last_flush = now
            if self.cfg.once and taken:
                if not self.runners:
                    break
                self._nap(0.5)
                continue
            slot = self.pool.take()
            if slot is None:
                self._nap(self.cfg.poll_interval)
                continue
            if self._lease(slot):
                taken += 1
            elif self.fatal is not None:  # the server refused this agent's token
                return 3
        return 0

    def _nap(self, seconds: float) -> None:
        self.wake.wait(seconds)
        self.wake.clear()

    def _lease(self, slot: Slot) -> bool:
        """Ask for a job for ``slot`` and start it; False when none came (the slot is free again)."""
        asked = time.monotonic()
        try:
            # a long poll: the server answers when a job is ready, at the latest after poll_interval
            job = self.api.acquire(
                self.acquire_request(slot, wait_s=0 if self.cfg.once else self.cfg.poll_interval),
                retry_seconds=0,
            )
        except Exception as e:  # noqa: BLE001
            self.pool.release(slot)
            self._acquire_failed(e)
            return False
        self._failures = 0
        if job is None:
            self.pool.release(slot)
            left = self.cfg.poll_interval - (time.monotonic() - asked)  # the server waited the rest
            if left > 0.05:
                self._nap(left)
            return False
        self.start_job(job, slot)
        return True

    def _acquire_failed(self, e: Exception) -> None:
        if isinstance(e, AuthError):
            log.error("the server refused this agent's token: %s", e)
            self.fatal = str(e)
            return
        self._failures += 1
        delay = min(self.cfg.poll_interval * 2 ** min(self._failures, 5), max(self.cfg.poll_interval, 5.0))
        if is_transient(e):
            log.warning("acquire: %s; retrying in %.1f s", e, delay)
        else:
            log.error("acquire refused: %s; retrying in %.1f s", e, delay)
        self.stopping.wait(delay)

    def start_job(self, job: Job, slot: Slot) -> None:
        runner = JobRunner(self, job, slot)
        with self._runners_lock:
            self.runners[job.id] = runner
        runner.start()

    def job_finished(self, runner: JobRunner) -> None:
        with self._runners_lock:
            self.runners.pop(runner.job.id, None)
        if not runner.handed_over:
            self.pool.release(runner.slot)
        self.jobs_done += 1
        self.wake.set()

    def drain(self) -> None:
        """Wait for running jobs (up to the grace period when stopping), then stop the rest."""
        while self.runners and not self._grace_over():
            time.sleep(0.1)
        for runner in list(self.runners.values()):
            runner.join()
        self.flush_outbox()
        if len(self.outbox):
            log.warning(
                "%d unacknowledged result(s) stay in %s; they are resent when an agent starts "
                "with this --workdir",
                len(self.outbox),
                self.outbox.dir,
            )

    def _grace_over(self) -> bool:
        """True once running jobs must stop (a second signal, or the grace period is over)."""
        if self.hard_stop.is_set():
            return True
        if (
            self.stopping.is_set()
            and self.stop_requested_at is not None
            and time.monotonic() - self.stop_requested_at >= self.cfg.grace_seconds
        ):
            log.warning("grace period over: stopping %d running job(s)", len(self.runners))
            self.hard_stop.set()
            return True
        return False

    def close(self) -> None:
        self.executors.close()
