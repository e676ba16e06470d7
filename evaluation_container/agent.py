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

import json
import logging
import math
import os
import shutil
import signal
import socket
import stat
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phpo.client.agent_api import AgentAPI, is_transient
from phpo.client.errors import APIError, AuthError, Conflict, NotFound
from phpo.schemas.archives import (
    ArchiveError,
    ArchiveLimits,
    open_beneath,
    read_beneath,
    unlink_beneath,
    write_beneath,
)
from phpo.schemas.artifacts import ArtifactKind
from phpo.schemas.jobs import (
    MAX_ACQUIRE_WAIT_S,
    AcquireRequest,
    CompleteRequest,
    FailRequest,
    HeartbeatRequest,
    IntermediateReport,
    Job,
    JobKind,
    JobPoint,
    PointResult,
)
from phpo.schemas.points import EvaluationOutput
from phpo.schemas.upstream import STEERING_IN, STEERING_OUT, steering_form, substitute_placeholders

from . import steering_command

from . import mlflow_local
from .checkpoints import CheckpointSaver, restore_checkpoint, safe_extract
from .gpu_slots import Slot, SlotPool, plan_slots
from .outbox import Outbox
from .resources import base_resources, container_runtimes_installed
from .launchers import torchrun_command
from .runners.base import Executor, ExecutorError, PayloadUser, RunHandle, RunSpec
from .runners.subprocess import SubprocessExecutor

log = logging.getLogger("phpo.agent")

PHPO_DIR = ".phpo"  # the agent's files inside a job's working directory (SDK exchange)
INTERMEDIATE_FILE = f"{PHPO_DIR}/intermediate.jsonl"
CONTROL_FILE = f"{PHPO_DIR}/control.json"
STDERR_TAIL_BYTES = 4000
META_MAX_BYTES = 1024 * 1024
OUTPUT_MAX_BYTES = 16 * 1024 * 1024
TIMEOUT_STATUS = 124  # like coreutils' timeout(1)


def default_agent_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def heartbeat_request(reports: list[IntermediateReport]) -> HeartbeatRequest:
    """A heartbeat carrying ``reports``; values the payload reported as NaN or Infinity travel as
    null (JSON has neither, and the server refuses them), and the message says which, so a
    missing value on the server is explained rather than silent."""
    nulls = [r for r in reports if r.value is None]
    note = None
    if nulls:
        where = ", ".join(f"point {r.point_id} step {r.step}" for r in nulls[:10])
        more = f" and {len(nulls) - 10} more" if len(nulls) > 10 else ""
        note = f"intermediate values that were NaN or Infinity were sent as null: {where}{more}"
    return HeartbeatRequest(intermediate=reports, message=note)


@dataclass
class AgentConfig:
    site: str
    workdir: Path
    slots: int = 1
    name: str = field(default_factory=default_agent_name)
    gpus: list | None = None  # list[GPUInfo]; None = no GPU management
    share_gpus: bool = False
    executor: str = "subprocess"  # subprocess (containers if a docker engine answers) | docker | podman | dask
    scheduler: str | None = None  # --executor dask: the Dask scheduler's address
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
        return ArchiveLimits(max_members=self.max_unpack_files, max_member_bytes=self.max_unpack_bytes,
                             max_total_bytes=self.max_unpack_bytes)


class Outcome:
    exited = "exited"
    timeout = "timeout"
    lost = "lost"  # the server says the lease is gone
    cancelled = "cancelled"  # the server asked to stop (task cancelled/paused)
    stopped = "stopped"  # the agent is shutting down


def tail_text(path: Path, max_bytes: int = STDERR_TAIL_BYTES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    if size > max_bytes:
        text = "..." + text[text.find("\n") + 1:] if "\n" in text else "..." + text
    return text.strip()


def with_stderr(message: str, stderr_path: Path) -> str:
    tail = tail_text(stderr_path)
    return f"{message}\n--- stderr (tail) ---\n{tail}" if tail else f"{message} (stderr was empty)"


def read_output(
    output_path: Path, outcome: str, rc: int | None, stderr_path: Path, point_id: int, timeout_s: float | None,
    root: Path | None = None,
) -> PointResult:
    """Turn what the payload left behind into the point's result (docs/payloads.md). Anything but a
    readable output with status 0 and a loss is a failed attempt whose message says why and
    shows the end of stderr. The file is read without following links below ``root`` (default:
    its folder)."""
    name = output_path.name
    if outcome == Outcome.timeout:
        return PointResult(
            point_id=point_id, status=TIMEOUT_STATUS,
            message=with_stderr(f"timed out after {timeout_s:g} s (evaluationTimeout); "
                                "the payload and its whole process group were killed", stderr_path),
        )
    code = rc if rc else 1
    root = output_path.parent if root is None else root
    try:
        raw = json.loads(read_beneath(root, output_path.relative_to(root), OUTPUT_MAX_BYTES))
    except FileNotFoundError:
        return PointResult(point_id=point_id, status=code, message=with_stderr(
            f"the payload exited with code {rc} and wrote no output file '{name}'", stderr_path))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return PointResult(point_id=point_id, status=code, message=with_stderr(
            f"the output file '{name}' is not valid JSON ({e}); exit code {rc}", stderr_path))
    if not isinstance(raw, dict):
        return PointResult(point_id=point_id, status=code, message=with_stderr(
            f"the output file '{name}' must hold a JSON object like "
            f'{{"status": 0, "loss": 0.12}}, got {type(raw).__name__}; exit code {rc}', stderr_path))
    try:
        out = EvaluationOutput.model_validate(raw)
    except ValueError as e:
        return PointResult(point_id=point_id, status=code, message=with_stderr(
            f"the output file '{name}' does not follow the contract: {e}; exit code {rc}", stderr_path))
    metrics = out.all_metrics()  # keys beyond status/loss/message/metrics are kept with the metrics
    if out.status != 0:
        own = out.message or "(no message)"
        return PointResult(point_id=point_id, status=out.status, metrics=metrics, message=with_stderr(
            f"the payload reported status {out.status}: {own}; exit code {rc}", stderr_path))
    if out.loss is None:
        return PointResult(point_id=point_id, status=code, metrics=metrics, message=with_stderr(
            f"the output file '{name}' has status 0 but no loss; exit code {rc}", stderr_path))
    if rc:
        log.warning("point %d: payload exited %s after writing a valid result; keeping the result", point_id, rc)
    return PointResult(point_id=point_id, status=0, loss=out.loss, metrics=metrics, message=out.message)


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
            # payloads of another account may pass through to their run directories, but not
            # read the agent's cache (every task's sandbox) or outbox (every job's results)
            for d, mode in ((self.workdir, 0o711), (self.workdir / "jobs", 0o711), (self.workdir / "cache", 0o700),
                            (self.outbox.dir, 0o700)):
                d.mkdir(parents=True, exist_ok=True)
                d.chmod(mode)
        self.runners: dict[int, JobRunner] = {}
        self._runners_lock = threading.Lock()
        self._sandbox_locks: dict[int, threading.Lock] = {}
        self._sandbox_lock = threading.Lock()
        self.subprocess_executor = SubprocessExecutor()
        self.container_executor: Executor | None = None
        self.evaluation_executor: Executor | None = None  # --executor dask: evaluations on the cluster
        self._podman = None
        self.jobs_done = 0
        self.fatal: str | None = None

    # --- setup -------------------------------------------------------------------------

    def setup_container_runtime(self) -> None:
        """Find the container engine this agent can use; raises ExecutorError when one was
        asked for (``--executor docker|podman``) and does not work."""
        from .runners.docker import DockerExecutor

        kind = self.cfg.executor
        if kind == "subprocess":
            url = self.cfg.docker_url
            if url or os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists():
                try:
                    ex = DockerExecutor(url, name="docker", timeout=10)
                    if ex.ping():
                        self.container_executor = ex
                    else:
                        ex.close()
                except ExecutorError:
                    pass
        elif kind == "docker":
            ex = DockerExecutor(self.cfg.docker_url, name="docker")
            if not ex.ping():
                raise ExecutorError(f"--executor docker: no Docker engine answers at "
                                    f"{self.cfg.docker_url or os.environ.get('DOCKER_HOST') or 'the default socket'}")
            self.container_executor = ex
        elif kind == "podman":
            url = self.cfg.docker_url
            if not url:
                from .runners.podman import PodmanError, PodmanService

                self._podman = PodmanService(self.workdir / "podman")
                try:
                    url = self._podman.start()
                except PodmanError as e:
                    raise ExecutorError(f"--executor podman: {e}") from e
            ex = DockerExecutor(url, name="podman")
            if not ex.ping():
                raise ExecutorError(f"--executor podman: no podman service answers at {url}")
            self.container_executor = ex
        elif kind == "dask":
            from .runners.dask import DaskExecutor

            if not self.cfg.scheduler:
                raise ExecutorError("--executor dask needs --scheduler ADDRESS (tcp://HOST:8786)", retryable=False)
            self.evaluation_executor = DaskExecutor(self.cfg.scheduler)
            log.info("evaluations run on the Dask cluster at %s (%d workers)", self.cfg.scheduler,
                     len(self.evaluation_executor.workers()))
        else:
            raise ExecutorError(f"unknown executor {kind!r} (subprocess, docker, podman, dask)")
        if self.container_executor is None:
            found = container_runtimes_installed()
            log.info("no container engine answers: jobs that name a container will fail%s",
                     f" (installed but not serving: {', '.join(found)})" if found else "")
        else:
            log.info("container jobs run with %s", self.container_executor.name)
        self.resources = base_resources([self.container_executor.name] if self.container_executor else [])

    def acquire_request(self, slot: Slot, wait_s: float = 0.0) -> AcquireRequest:
        res = self.resources.model_copy(update={"gpus": list(slot.gpus)})
        return AcquireRequest(agent=self.cfg.name, site=self.cfg.site, resources=res, kinds=self.cfg.kinds,
                              wait_s=min(max(0.0, wait_s), MAX_ACQUIRE_WAIT_S))

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
            log.info("stop requested (%s): no new jobs; %d running job(s) get %.0f s to finish",
                     signal.Signals(signum).name if signum else "api", len(self.runners), self.cfg.grace_seconds)
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
        log.info("agent %s at site %s: %d slot(s), workdir %s, resources %s", self.cfg.name, self.cfg.site,
                 self.pool.capacity, self.workdir, self.resources.model_dump(exclude={"cpu_flags"}))
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
        failures = 0
        taken = 0
        while not self.stopping.is_set():
            now = time.monotonic()
            if now - last_flush >= self.cfg.outbox_interval:
                self.flush_outbox()
                last_flush = now
            if self.cfg.once and taken:
                if not self.runners:
                    break
                self.wake.wait(0.5)
                self.wake.clear()
                continue
            slot = self.pool.take()
            if slot is None:
                self.wake.wait(self.cfg.poll_interval)
                self.wake.clear()
                continue
            asked = time.monotonic()
            try:
                # a long poll: the server answers when a job is ready, at the latest after poll_interval
                job = self.api.acquire(self.acquire_request(slot, wait_s=0 if self.cfg.once else self.cfg.poll_interval),
                                       retry_seconds=0)
            except Exception as e:  # noqa: BLE001
                self.pool.release(slot)
                if isinstance(e, AuthError):
                    log.error("the server refused this agent's token: %s", e)
                    self.fatal = str(e)
                    return 3
                failures += 1
                delay = min(self.cfg.poll_interval * 2 ** min(failures, 5), max(self.cfg.poll_interval, 5.0))
                if is_transient(e):
                    log.warning("acquire: %s; retrying in %.1f s", e, delay)
                else:
                    log.error("acquire refused: %s; retrying in %.1f s", e, delay)
                self.stopping.wait(delay)
                continue
            failures = 0
            if job is None:
                self.pool.release(slot)
                left = self.cfg.poll_interval - (time.monotonic() - asked)  # the server waited the rest
                if left > 0.05:
                    self.wake.wait(left)
                    self.wake.clear()
                continue
            taken += 1
            self.start_job(job, slot)
        return 0

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
        while self.runners:
            if self.hard_stop.is_set():
                break
            if (self.stopping.is_set() and self.stop_requested_at is not None
                    and time.monotonic() - self.stop_requested_at >= self.cfg.grace_seconds):
                log.warning("grace period over: stopping %d running job(s)", len(self.runners))
                self.hard_stop.set()
                break
            time.sleep(0.1)
        for runner in list(self.runners.values()):
            runner.join()
        self.flush_outbox()
        if len(self.outbox):
            log.warning("%d unacknowledged result(s) stay in %s; they are resent when an agent starts "
                        "with this --workdir", len(self.outbox), self.outbox.dir)

    def close(self) -> None:
        for ex in (self.container_executor, self.evaluation_executor, self.subprocess_executor):
            if ex is not None:
                ex.close()
        if self._podman is not None:
            self._podman.stop()

    # --- shared helpers for runners ----------------------------------------------------

    def sandbox_tarball(self, artifact_id: int) -> Path:
        """The sandbox tarball, downloaded once per agent and shared by its jobs."""
        with self._sandbox_lock:
            lock = self._sandbox_locks.setdefault(artifact_id, threading.Lock())
        path = self.workdir / "cache" / f"sandbox-{artifact_id}.tar.gz"
        with lock:
            if not path.exists():
                self.api.download_artifact(artifact_id, path)
        return path

    def executor_for(self, image: str | None, evaluation: bool = False) -> Executor:
        """The executor of a job: a container engine for an image, else the Dask cluster for
        evaluations with ``--executor dask``, else a local process (steering always runs here)."""
        if not image:
            if evaluation and self.evaluation_executor is not None:
                return self.evaluation_executor
            return self.subprocess_executor
        if self.container_executor is None:
            raise ExecutorError(
                f"the task asks for the container {image!r} but this agent ({self.cfg.name} at site "
                f"{self.cfg.site}) has no container runtime: no Docker engine answers and "
                "--executor docker|podman was not given",
                retryable=False,
            )
        return self.container_executor


class JobRunner(threading.Thread):
    """Runs one leased job to its end and tells the server how it ended."""

    def __init__(self, agent: Agent, job: Job, slot: Slot):
        super().__init__(name=f"job-{job.id}", daemon=True)
        self.agent = agent
        self.api = agent.api
        self.cfg = agent.cfg
        self.job = job
        self.slot = slot
        self.jobdir = agent.workdir / "jobs" / f"job-{job.id}"
        self.rundir = self.jobdir / "run"
        self.logdir = self.jobdir / "logs"
        self.scratch = self.jobdir / "scratch"
        self.done = threading.Event()
        self.lease_lost = threading.Event()
        self.cancelled = threading.Event()
        self.paused = threading.Event()  # the task is paused: no further point of this job starts
        self.current_point: JobPoint | None = None
        self._point_ids = {p.point_id for p in job.points}
        self._intermediate_offset = 0
        self._intermediate_pending: list[IntermediateReport] = []
        self._lock = threading.Lock()
        self.next_job: Job | None = None  # leased by ``complete`` for this slot
        self.handed_over = False
        self.owner = self.cfg.payload_user.owner if self.cfg.payload_user else None

    # --- files in the run directory ---------------------------------------------------------
    # The payload controls its run directory (and may run as another, less privileged account):
    # the agent never follows a link there, so a payload cannot make it read or write elsewhere.

    def write_run_file(self, rel: str, text: str) -> None:
        write_beneath(self.rundir, rel, text.encode(), owner=self.owner)

    def remove_run_file(self, rel: str) -> None:
        unlink_beneath(self.rundir, rel)

    def copy_run_file(self, rel: str, max_bytes: int | None = None) -> Path | None:
        """A copy in the job's scratch directory of the payload's regular file ``rel`` (None when
        there is none, it is no regular file, or it is over ``max_bytes``)."""
        try:
            fd = open_beneath(self.rundir, rel, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return None
        dest = self.scratch / f"upload-{Path(rel).name}"
        with os.fdopen(fd, "rb") as src:
            st = os.fstat(src.fileno())
            if not stat.S_ISREG(st.st_mode):
                return None
            if max_bytes is not None and st.st_size > max_bytes:
                log.warning("job %d: %s is over %d bytes; not uploaded", self.job.id, rel, max_bytes)
                return None
            with open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
        return dest

    # --- thread body ---------------------------------------------------------------------

    def run(self) -> None:
        hb = threading.Thread(target=self._heartbeat_loop, name=f"hb-{self.job.id}", daemon=True)
        try:
            for d in (self.rundir / PHPO_DIR, self.logdir, self.scratch):
                d.mkdir(parents=True, exist_ok=True)
            if self.owner is not None:  # the payload's account owns its working directory, nothing else
                for d in (self.rundir, self.rundir / PHPO_DIR):
                    os.chown(d, *self.owner)
                for d in (self.logdir, self.scratch):
                    d.chmod(0o700)
            hb.start()
            if self.job.kind == JobKind.steering:
                self.run_steering()
            else:
                self.run_evaluation()
            self.hand_over()
        except Exception as e:
            log.exception("job %d: unexpected error", self.job.id)
            self.finish("fail", FailRequest(error=f"agent {self.cfg.name}: unexpected error: {e!r}"[:99_000],
                                            retry=True))
        finally:
            self.done.set()
            if hb.is_alive():
                hb.join(timeout=5)
            if not self.cfg.keep_workdirs:
                shutil.rmtree(self.jobdir, ignore_errors=True)
            self.agent.job_finished(self)

    def hand_over(self) -> None:
        """Start the job ``complete`` leased for this slot (once); this thread may go on with
        its uploads meanwhile."""
        self.done.set()  # the job has ended on the server: no more heartbeats
        if self.next_job is not None and not self.handed_over:
            self.handed_over = True
            self.agent.start_job(self.next_job, self.slot)

    # --- heartbeat -----------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        interval = max(0.2, self.job.lease_seconds / 3)
        while not self.done.wait(interval):
            reports = self._collect_intermediate()
            try:
                resp = self.api.heartbeat(self.job.id, heartbeat_request(reports), retry_seconds=interval)
            except (Conflict, NotFound) as e:
                log.error("job %d: the server no longer holds this job for us (%s); stopping it", self.job.id, e)
                self.lease_lost.set()
                return
            except Exception as e:  # noqa: BLE001
                if is_transient(e):  # keep the values for the next beat; a refused batch is dropped
                    with self._lock:
                        self._intermediate_pending = reports + self._intermediate_pending
                log.warning("job %d: heartbeat failed (%s); trying again in %.1f s", self.job.id, e, interval)
                continue
            if resp.cancel and not self.cancelled.is_set():
                log.info("job %d: the server cancelled it", self.job.id)
                self.cancelled.set()
            if resp.pause and not self.paused.is_set():
                log.info("job %d: its task is paused; the running point goes on, no further point starts",
                         self.job.id)
            (self.paused.set if resp.pause else self.paused.clear)()
            if resp.stop_points:
                self._write_control({"stop_points": resp.stop_points})

    def _collect_intermediate(self) -> list[IntermediateReport]:
        """New lines the SDK appended to the intermediate file since the last heartbeat."""
        with self._lock:
            out, self._intermediate_pending = self._intermediate_pending, []
            point = self.current_point
            try:
                with os.fdopen(open_beneath(self.rundir, INTERMEDIATE_FILE, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
                    f.seek(self._intermediate_offset)
                    data = f.read()
            except OSError:
                return out
            end = data.rfind(b"\n")
            if end < 0:
                return out
            self._intermediate_offset += end + 1
            for line in data[: end + 1].splitlines():
                try:
                    rec = json.loads(line)
                    pid = rec.get("point_id") or (point.point_id if point else None)
                    if pid is None or int(pid) not in self._point_ids:
                        # the server refuses a whole heartbeat naming a point of another job
                        log.warning("job %d: ignoring an intermediate value for point %s, not in this job",
                                    self.job.id, pid)
                        continue
                    value = float(rec["value"])
                    if not math.isfinite(value):
                        log.warning("job %d: point %s reported %s at step %s; it is sent as null (JSON has "
                                    "no NaN or Infinity)", self.job.id, pid, value, rec["step"])
                    out.append(IntermediateReport(point_id=int(pid), step=int(rec["step"]),
                                                  value=value if math.isfinite(value) else None))
                except (ValueError, KeyError, TypeError):
                    log.warning("job %d: ignoring a bad intermediate line %r", self.job.id, line[:200])
            return out

    def flush_intermediate(self) -> None:
        """Send what the payload reported since the last heartbeat now, before its result (a
        short point may end between two heartbeats)."""
        reports = self._collect_intermediate()
        if not reports:
            return
        try:
            self.api.heartbeat(self.job.id, heartbeat_request(reports), retry_seconds=min(self.cfg.retry_seconds, 10))
        except Exception as e:  # noqa: BLE001
            log.warning("job %d: %d intermediate value(s) not delivered: %s", self.job.id, len(reports), e)

    def _write_control(self, data: dict[str, Any]) -> None:
        try:
            self.write_run_file(CONTROL_FILE, json.dumps(data))
        except OSError as e:
            log.warning("job %d: cannot write %s: %s", self.job.id, self.rundir / CONTROL_FILE, e)

    # --- talking to the server ------------------------------------------------------------

    def finish(self, kind: str, body: CompleteRequest | FailRequest) -> None:
        """End the job on the server; keep the call in the outbox when the server is away."""
        try:
            if kind == "complete":
                ack = self.api.complete(self.job.id, body)  # type: ignore[arg-type]
            else:
                ack = self.api.fail(self.job.id, body)  # type: ignore[arg-type]
            log.info("job %d: %s acknowledged (state %s%s)", self.job.id, kind, ack.state,
                     ", duplicate" if ack.duplicate else "")
            self.next_job = ack.next_job
        except Exception as e:
            if is_transient(e):
                # the outbox resends the result, never the request for a next job
                self.agent.outbox.put(kind, self.job.id, body.model_dump(mode="json", exclude={"next"}), str(e))
            elif isinstance(e, APIError):
                log.error("job %d: the server refused %s: %s", self.job.id, kind, e)
            else:
                raise

    def report_point(self, result: PointResult) -> bool:
        """Report one point now; False when it must go with ``complete`` instead (no answer)."""
        try:
            ack = self.api.report_point(self.job.id, result)
            log.info("job %d: point %d reported (status %d%s)", self.job.id, result.point_id, result.status,
                     ", duplicate" if ack.duplicate else "")
            return True
        except (Conflict, NotFound) as e:
            log.error("job %d: point %d result refused: %s", self.job.id, result.point_id, e)
            self.lease_lost.set()
            return True
        except Exception as e:
            if is_transient(e):
                log.warning("job %d: point %d result not acknowledged (%s); it goes with complete",
                            self.job.id, result.point_id, e)
                return False
            if isinstance(e, APIError):
                log.error("job %d: point %d result refused: %s", self.job.id, result.point_id, e)
                return True
            raise

    def upload(self, kind: ArtifactKind, path: Path, name: str, point_id: int | None) -> None:
        """Best-effort upload of a log/meta/metrics file (a lost log must not lose a result)."""
        try:
            self.api.upload_artifact(self.job.id, kind, path, name, point_id=point_id,
                                     retry_seconds=min(self.cfg.retry_seconds, 30))
        except Exception as e:  # noqa: BLE001
            log.warning("job %d: upload of %s %s failed: %s", self.job.id, kind.value, name, e)

    def upload_log(self, path: Path, name: str, point_id: int | None) -> None:
        if not path.exists() or path.stat().st_size == 0:
            return
        size = path.stat().st_size
        if size > self.cfg.max_log_bytes:
            cut = self.scratch / (name + ".tail")
            with open(path, "rb") as src, open(cut, "wb") as dst:
                src.seek(size - self.cfg.max_log_bytes)
                dst.write(f"[phpo: first {size - self.cfg.max_log_bytes} bytes cut, "
                          f"keeping the last {self.cfg.max_log_bytes}]\n".encode())
                shutil.copyfileobj(src, dst)
            self.upload(ArtifactKind.log, cut, name, point_id)
            cut.unlink(missing_ok=True)
        else:
            self.upload(ArtifactKind.log, path, name, point_id)

    # --- preparing and running ------------------------------------------------------------

    def unpack_sandbox(self, artifact_id: int | None) -> bool:
        """Unpack the job's sandbox into its run directory; False (the job failed for good, the
        message naming the member at fault) when the sandbox is refused."""
        if artifact_id is None:
            return True
        try:
            safe_extract(self.agent.sandbox_tarball(artifact_id), self.rundir, self.cfg.unpack_limits, self.owner)
        except (ArchiveError, NotFound) as e:
            why = "is missing on the server" if isinstance(e, NotFound) else f"was not unpacked on agent {self.cfg.name}"
            log.error("job %d: the sandbox (artifact %d) %s: %s", self.job.id, artifact_id, why, e)
            self.finish("fail", FailRequest(error=f"the sandbox (artifact {artifact_id}) {why}: {e}", retry=False))
            return False
        return True

    def run_command(self, handle: RunHandle, timeout_s: float | None,
                    saver: CheckpointSaver | None = None, interval: float = 300.0) -> str:
        """Watch a started command until it ends or must be stopped; returns an Outcome."""
        start = time.monotonic()
        next_ckpt = start + interval
        while True:
            if handle.wait(0.1) is not None:
                return Outcome.exited
            now = time.monotonic()
            reason = None
            if timeout_s is not None and now - start >= timeout_s:
                reason = Outcome.timeout
            elif self.lease_lost.is_set():
                reason = Outcome.lost
            elif self.cancelled.is_set():
                reason = Outcome.cancelled
            elif self.agent.hard_stop.is_set():
                reason = Outcome.stopped
            if reason:
                log.info("job %d: stopping the payload (%s)", self.job.id, reason)
                handle.kill(self.cfg.kill_grace)
                return reason
            if saver is not None and now >= next_ckpt:
                self.save_checkpoint(saver)
                next_ckpt = time.monotonic() + interval

    def save_checkpoint(self, saver: CheckpointSaver) -> None:
        try:
            if saver.save_if_changed():
                log.info("job %d: checkpoint %d uploaded", self.job.id, saver.uploads)
        except Exception as e:  # noqa: BLE001 - keep training; the next check tries again
            log.warning("job %d: checkpoint upload failed: %s", self.job.id, e)

    def base_env(self) -> dict[str, str]:
        env = {
            "PHPO_JOB_ID": str(self.job.id),
            "PHPO_TASK_ID": str(self.job.task_id),
            "PHPO_SEGMENT": self.job.segment,
            "PHPO_SEGMENT_ID": str(self.job.segment_id),
            "PHPO_SITE": self.cfg.site,
            "PHPO_AGENT": self.cfg.name,
            "PHPO_INTERMEDIATE_FILE": INTERMEDIATE_FILE,
            "PHPO_CONTROL_FILE": CONTROL_FILE,
        }
        if self.slot.gpu_indices is not None:
            env["PHPO_GPUS"] = ",".join(str(i) for i in self.slot.gpu_indices)
        return env

    def run_evaluation(self) -> None:
        ev = self.job.evaluation
        if ev is None:
            self.finish("fail", FailRequest(error="evaluation job without evaluation settings", retry=False))
            return
        try:
            executor = self.agent.executor_for(ev.container, evaluation=True)
        except ExecutorError as e:
            log.error("job %d: %s", self.job.id, e)
            self.finish("fail", FailRequest(error=str(e), retry=e.retryable))
            return
        if not self.unpack_sandbox(ev.sandbox_artifact):
            return
        if ev.training_files:
            self.write_run_file(ev.training_data, json.dumps(ev.training_files))
        command = ev.exec
        if "%SEGMENT_NAME" in command:
            command = substitute_placeholders(command, {"%SEGMENT_NAME": self.job.segment})
        if ev.launcher == "torchrun":
            try:
                command = torchrun_command(command, ev.processes, self.slot.gpu_indices, container=bool(ev.container))
            except FileNotFoundError as e:
                self.finish("fail", FailRequest(error=f"{e} (agent {self.cfg.name})", retry=True))
                return
        elif ev.launcher != "none":
            self.finish("fail", FailRequest(error=f"this agent does not know the launcher {ev.launcher!r}", retry=True))
            return
        seen_workdir = executor.workdir_seen_by_command(
            RunSpec(command="", workdir=self.rundir, stdout_path=Path(), stderr_path=Path()))
        interval = max(0.5, ev.checkpoint_interval_s)
        point_holder: dict[str, int | None] = {"id": None}

        def upload_ckpt(path: Path) -> None:
            self.api.upload_artifact(self.job.id, ArtifactKind.checkpoint, path,
                                     f"checkpoint-p{point_holder['id']}.tar.gz", point_id=point_holder["id"],
                                     retry_seconds=min(self.cfg.retry_seconds, 60))

        saver = CheckpointSaver(self.rundir, ev.checkpoint_to_save, max_bytes=self.cfg.max_checkpoint_bytes,
                                scratch_dir=self.scratch, upload=upload_ckpt) if ev.checkpoint_to_save else None
        unacked: list[PointResult] = []
        stop_reason: str | None = None
        for i, point in enumerate(self.job.points):
            if i > 0 and (self.agent.stopping.is_set() or self.lease_lost.is_set() or self.cancelled.is_set()
                          or self.paused.is_set()):
                stop_reason = stop_reason or Outcome.stopped
                break
            point_holder["id"] = point.point_id
            with self._lock:
                self.current_point = point
            # a fresh start for this point in the shared directory
            self.remove_run_file(ev.output)
            mlflow_local.clear(self.rundir)
            if saver is not None and i > 0:
                saver.remove_files()
            if ev.checkpoint_to_load:
                self.remove_run_file(ev.checkpoint_to_load)
            self.remove_run_file(CONTROL_FILE)
            resumed = False
            if point.checkpoint_artifact is not None:
                tarball = self.scratch / f"restore-{point.checkpoint_artifact}.tar.gz"
                try:
                    self.api.download_artifact(point.checkpoint_artifact, tarball)
                    restore_checkpoint(tarball, self.rundir, ev.checkpoint_to_load, self.cfg.unpack_limits,
                                       self.owner)
                except (ArchiveError, NotFound) as e:
                    why = ("is missing on the server" if isinstance(e, NotFound)
                           else f"was not restored on agent {self.cfg.name}")
                    log.error("job %d: the checkpoint of point %d (artifact %d) %s: %s", self.job.id,
                              point.point_id, point.checkpoint_artifact, why, e)
                    result = PointResult(point_id=point.point_id, status=1, message=(
                        f"the checkpoint of point {point.point_id} (artifact {point.checkpoint_artifact}) {why}: {e}"))
                    if i == len(self.job.points) - 1 or not self.report_point(result):
                        unacked.append(result)
                    continue
                resumed = True
                log.info("job %d: point %d resumes from checkpoint artifact %d", self.job.id, point.point_id,
                         point.checkpoint_artifact)
            if saver is not None:
                saver.reset(saver.fingerprint() if resumed else None)
            self.write_run_file(ev.input, json.dumps(point.params))
            env = self.base_env()
            env.update({
                "PHPO_WORKDIR": seen_workdir,
                "PHPO_INPUT_FILE": ev.input,
                "PHPO_OUTPUT_FILE": ev.output,
                "PHPO_POINT_ID": str(point.point_id),
                "PHPO_POINT_SERIAL": str(point.serial),
                "PHPO_ATTEMPT": str(point.attempt),
                "PHPO_RESUMED": "1" if resumed else "0",
                "PHPO_CHECKPOINT_TO_SAVE": ",".join(ev.checkpoint_to_save),
            })
            if ev.training_files:
                env["PHPO_TRAINING_DATA_FILE"] = ev.training_data
            if ev.checkpoint_to_load:
                env["PHPO_CHECKPOINT_TO_LOAD"] = ev.checkpoint_to_load
            if ev.meta:
                env["PHPO_META_FILE"] = ev.meta
            if ev.metrics:
                env["PHPO_METRICS_FILE"] = ev.metrics
            # the payload's own MLflow calls go to ./mlruns; the server imports it into the point's run
            env.update(mlflow_local.payload_env(seen_workdir, bool(self.job.mlflow_tracking_uri),
                                                point.mlflow_run_id))
            tag = f"p{point.point_id}-a{point.attempt}"
            stdout, stderr = self.logdir / f"{tag}.stdout.txt", self.logdir / f"{tag}.stderr.txt"
            spec = RunSpec(command=command, workdir=self.rundir, stdout_path=stdout, stderr_path=stderr,
                           env=env, image=ev.container, gpus=self.slot.gpu_indices,
                           network=self.cfg.container_network, user=self.cfg.payload_user)
            log.info("job %d: point %d (attempt %d) started: %s", self.job.id, point.point_id, point.attempt,
                     command)
            try:
                handle = executor.start(spec)
            except ExecutorError as e:
                log.error("job %d: %s", self.job.id, e)
                if not e.retryable:
                    self.finish("fail", FailRequest(error=str(e), retry=False))
                    return
                result = PointResult(point_id=point.point_id, status=1, message=f"cannot start the payload: {e}")
                if not self.report_point(result):
                    unacked.append(result)
                continue
            try:
                outcome = self.run_command(handle, ev.timeout_s, saver, interval)
            finally:
                handle.finish()
            rc = handle.poll()
            if outcome == Outcome.lost:
                stop_reason = outcome
                break
            if outcome in (Outcome.cancelled, Outcome.stopped):
                if saver is not None:
                    self.save_checkpoint(saver)
                stop_reason = outcome
                self._upload_point_files(ev, point, stdout, stderr)
                break
            self.flush_intermediate()
            result = read_output(self.rundir / ev.output, outcome, rc, stderr, point.point_id, ev.timeout_s,
                                 root=self.rundir)
            log.info("job %d: point %d ended (%s, exit %s, status %d)", self.job.id, point.point_id, outcome, rc,
                     result.status)
            if result.status != 0 and saver is not None:
                self.save_checkpoint(saver)
            if i == len(self.job.points) - 1:
                # the last result goes with complete (one round trip less per job); its files
                # first, so a task that has ended has all its logs
                unacked.append(result)
                self._upload_point_files(ev, point, stdout, stderr)
                break
            if not self.report_point(result):
                unacked.append(result)
            self._upload_point_files(ev, point, stdout, stderr)
            if self.lease_lost.is_set():
                stop_reason = Outcome.lost
                break
        with self._lock:
            self.current_point = None
        if stop_reason == Outcome.lost:
            log.warning("job %d: lease lost; its points go back to the server's queue", self.job.id)
            if unacked:
                # the server may still take results it has not seen (it answers duplicate/409)
                self.finish("complete", CompleteRequest(results=unacked))
            return
        if stop_reason in (Outcome.cancelled, Outcome.stopped) and (
            stop_reason == Outcome.cancelled or self.agent.hard_stop.is_set()
        ):
            why = ("cancelled by the server" if stop_reason == Outcome.cancelled
                   else f"agent {self.cfg.name} is shutting down")
            if unacked:
                self.finish("complete", CompleteRequest(results=unacked, message=why))
            else:
                self.finish("fail", FailRequest(error=why, retry=True))
            return
        self.finish("complete", CompleteRequest(results=unacked, next=self.agent.next_request(self.slot)))

    def _upload_point_files(self, ev: Any, point: JobPoint, stdout: Path, stderr: Path) -> None:
        name = f"job{self.job.id}-a{point.attempt}"
        self.upload_log(stdout, f"{name}.stdout.txt", point.point_id)
        self.upload_log(stderr, f"{name}.stderr.txt", point.point_id)
        for kind, rel, limit in ((ArtifactKind.meta, ev.meta, META_MAX_BYTES), (ArtifactKind.metrics, ev.metrics, None)):
            p = self.copy_run_file(rel, limit) if rel else None
            if p is not None:
                self.upload(kind, p, Path(rel).name, point.point_id)
                p.unlink(missing_ok=True)
        if self.job.mlflow_tracking_uri:  # what the payload logged with MLflow, for the point's run
            try:
                packed = mlflow_local.pack(self.rundir, ev.metrics, self.scratch / f"{name}.mlruns.tgz")
            except (OSError, tarfile.TarError) as e:
                log.warning("job %d: cannot pack the payload's mlruns/: %s", self.job.id, e)
                packed = None
            if packed is not None:
                self.upload(ArtifactKind.metrics, packed, packed.name, point.point_id)
                packed.unlink(missing_ok=True)

    def run_steering(self) -> None:
        """One steering iteration as iDDS runs it: ``%IN`` (``idds_input.json``) written into a
        fresh working directory, the command run in one of its three forms (see
        :mod:`.steering_command`), ``%OUT`` (``output.json``) read back from it."""
        st = self.job.steering
        if st is None:
            self.finish("fail", FailRequest(error="steering job without steering settings", retry=False))
            return
        form = steering_form(st.exec, st.container)
        try:
            executor = self.agent.executor_for(st.container or ("(docker-style steeringExec)" if form != "shell"
                                                                 else None))
        except ExecutorError as e:
            log.error("job %d: %s", self.job.id, e)
            self.finish("fail", FailRequest(error=str(e), retry=e.retryable))
            return
        if not self.unpack_sandbox(st.sandbox_artifact):
            return
        self.write_run_file(STEERING_IN, json.dumps(st.input))
        self.remove_run_file(STEERING_OUT)
        stdout, stderr = self.logdir / "steering.stdout.txt", self.logdir / "steering.stderr.txt"
        spec = RunSpec(command="", workdir=self.rundir, stdout_path=stdout, stderr_path=stderr,
                       gpus=self.slot.gpu_indices, network=self.cfg.container_network, user=self.cfg.payload_user)
        spec.env = {**self.base_env(), "PHPO_WORKDIR": str(self.rundir)}
        try:
            steering_command.prepare(spec, st.exec, st.container, st.num_points, st.max_points)
        except ExecutorError as e:
            self.finish("fail", FailRequest(error=f"cannot run the steering command: {e}", retry=e.retryable))
            return
        log.info("job %d: steering for task %d started: %s", self.job.id, self.job.task_id, spec.command)
        try:
            handle = executor.start(spec)
        except ExecutorError as e:
            self.finish("fail", FailRequest(error=f"cannot start the steering command: {e}", retry=e.retryable))
            return
        try:
            outcome = self.run_command(handle, st.timeout_s)
        finally:
            handle.finish()
        rc = handle.poll()
        if outcome == Outcome.lost:
            return
        if outcome != Outcome.exited:
            what = {Outcome.timeout: f"timed out after {st.timeout_s:g} s",
                    Outcome.cancelled: "was cancelled by the server",
                    Outcome.stopped: f"was stopped: agent {self.cfg.name} is shutting down"}[outcome]
            self.finish("fail", FailRequest(error=with_stderr(f"the steering command {what}", stderr)[:99_000],
                                            retry=True))
            return
        error = None
        points: Any = None
        try:
            points = json.loads(read_beneath(self.rundir, STEERING_OUT))
            if not isinstance(points, list):
                error = (f"the steering output (%OUT) must be a JSON list of points, got "
                         f"{type(points).__name__}; exit code {rc}")
        except FileNotFoundError:
            error = f"the steering command exited with code {rc} and wrote no output file (%OUT)"
        except (OSError, UnicodeDecodeError, ValueError) as e:
            error = f"the steering output (%OUT) is not valid JSON ({e}); exit code {rc}"
        if error is None and rc:
            log.warning("job %d: steering exited %s but wrote a valid output; using it", self.job.id, rc)
        if error is not None:
            self.finish("fail", FailRequest(error=with_stderr(error, stderr)[:99_000], retry=True))
            return
        self.finish("complete", CompleteRequest(steering_output=points, next=self.agent.next_request(self.slot)))
