"""The Dask executor: payloads run as tasks on an existing Dask cluster (``phpo agent --executor
dask --scheduler ADDRESS``).

The agent keeps everything else: it leases the points, prepares the job directory, heartbeats,
uploads checkpoints and reports through its outbox, exactly as for local processes. Only the
payload's process is started elsewhere: a Dask task on one worker runs ``bash -c COMMAND`` in the
job directory, in its own process group (killed with the worker: ``setpriv --pdeathsig``), and
returns its exit status. So the job directory must be visible to the workers at the same path: a
shared filesystem, as on SLURM and HTCondor sites, or workers on the agent's own machine
(``LocalCluster``). A worker that cannot see it fails the attempt saying so.

A worker lost mid-point is a failed attempt, never a lost point and never a second silent run:
Dask would run the task again on another worker, so the task records where it started (a Dask
``Variable``) and a second start returns at once; the agent sees the worker leave the scheduler,
ends the attempt with exit status 137 and a line in the job's stderr, and the server gives the
point to a new attempt that resumes from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path
from typing import Any

from .base import Executor, ExecutorError, RunHandle, RunSpec
from .subprocess import SubprocessExecutor

LOST = 137  # the exit status of an attempt whose worker was lost (as if killed by SIGKILL)
NOT_VISIBLE = 126  # the job directory is not on the worker's filesystem
RESTARTED = 125  # Dask ran the task a second time after losing the first worker


def _variable(name: str, client: Any = None) -> Any:
    """A Dask ``Variable`` of this attempt (on a worker: through the worker's own client)."""
    from distributed import Variable

    return Variable(name, client=client)


def _read(var: Any) -> Any:
    try:
        return var.get(timeout=0.05)
    except TimeoutError:
        return None
    except Exception:  # noqa: BLE001 - the scheduler went away: nothing to read
        return None


def run_on_worker(
    command: str,
    cwd: str,
    env_extra: dict[str, str],
    gpus: list[int] | None,
    stdout: str,
    stderr: str,
    key: str,
    poll_s: float = 0.5,
) -> int:
    """Runs on a Dask worker: the command in ``cwd`` as the subprocess executor runs it there,
    polling ``key``'s stop variable."""
    from distributed import get_worker

    started = _variable(f"{key}-started")
    if _read(started) is not None:  # Dask re-ran us after a lost worker: that attempt is over
        return RESTARTED
    started.set(get_worker().address)
    if not os.path.isdir(cwd):
        return NOT_VISIBLE
    stop = _variable(f"{key}-stop")
    handle = SubprocessExecutor().start(
        RunSpec(
            command=command,
            workdir=Path(cwd),
            stdout_path=Path(stdout),
            stderr_path=Path(stderr),
            env=env_extra,
            gpus=gpus,
        )
    )
    try:
        while (rc := handle.wait(timeout=poll_s)) is None:
            grace = _read(stop)
            if grace is not None:
                handle.kill(float(grace))
        return rc
    finally:  # what the command left behind goes with it
        handle.finish()


class DaskHandle(RunHandle):
    def __init__(self, executor: DaskExecutor, future: Any, key: str, spec: RunSpec):
        self.ex = executor
        self.future = future
        self.key = key
        self.spec = spec
        self._rc: int | None = None
        self._checked = 0.0

    def _end(self, rc: int, why: str | None = None) -> int:
        if why:
            with open(self.spec.stderr_path, "a") as f:
                f.write(f"\nphpo agent: {why}\n")
        self._rc = rc
        return rc

    def poll(self) -> int | None:
        if self._rc is not None:
            return self._rc
        if self.future.done():
            try:
                rc = int(self.future.result(timeout=5))
            except Exception as e:  # noqa: BLE001 - KilledWorker, a cancelled future, ...
                return self._end(LOST, f"the Dask task ended without an exit status: {type(e).__name__}: {e}")
            if rc == RESTARTED:
                return self._end(
                    LOST,
                    "the Dask worker running this attempt was lost (Dask started it again "
                    "elsewhere; the attempt is failed and the point retried instead)",
                )
            if rc == NOT_VISIBLE:
                return self._end(
                    rc,
                    f"the job directory {self.spec.workdir} is not visible on the Dask worker: "
                    "the Dask executor needs it on a filesystem the workers share",
                )
            return self._end(rc)
        now = time.monotonic()
        if now - self._checked >= 1.0:  # a lost worker: the scheduler no longer lists it
            self._checked = now
            where = _read(self.ex.variable(f"{self.key}-started"))
            if where is not None and where not in self.ex.workers():
                self.future.cancel()
                return self._end(LOST, f"the Dask worker {where} running this attempt was lost")
        return None

    def kill(self, grace: float = 5.0) -> None:
        if self.poll() is not None:
            return
        self.ex.variable(f"{self.key}-stop").set(grace)
        deadline = time.monotonic() + grace + 10
        while time.monotonic() < deadline and self.poll() is None:
            time.sleep(0.1)
        if self._rc is None:
            self.future.cancel()
            self._end(LOST, "the Dask task did not stop in time; cancelled")

    def finish(self) -> None:
        for suffix in ("started", "stop"):
            with contextlib.suppress(Exception):  # the scheduler is gone: nothing left to clean
                self.ex.variable(f"{self.key}-{suffix}").delete()
        self.future.release()


class DaskExecutor(Executor):
    """Runs commands on the Dask cluster whose scheduler answers at ``scheduler``."""

    name = "dask"

    def __init__(self, scheduler: str, timeout: float = 30.0):
        try:
            from distributed import Client
        except ImportError as e:
            raise ExecutorError(
                "--executor dask needs the dask extra: pip install 'phpo[dask]'", retryable=False
            ) from e
        try:
            self.client = Client(scheduler, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError) as e:
            raise ExecutorError(
                f"--executor dask: no Dask scheduler answers at {scheduler}: {e}", retryable=False
            ) from e
        self.scheduler = scheduler

    def variable(self, name: str) -> Any:
        return _variable(name, self.client)

    def workers(self) -> set[str]:
        try:
            return set(self.client.scheduler_info(n_workers=-1)["workers"])
        except TypeError:  # older distributed: no n_workers argument
            return set(self.client.scheduler_info()["workers"])

    def start(self, spec: RunSpec) -> DaskHandle:
        if spec.user is not None:
            raise ExecutorError(
                "--payload-user is not available with --executor dask (the workers' "
                "account runs the payloads)",
                retryable=False,
            )
        spec.stdout_path.parent.mkdir(parents=True, exist_ok=True)
        spec.stderr_path.parent.mkdir(parents=True, exist_ok=True)
        key = f"phpo-{uuid.uuid4().hex}"
        future = self.client.submit(
            run_on_worker,
            spec.command,
            str(spec.workdir),
            dict(spec.env),
            spec.gpus,
            str(spec.stdout_path),
            str(spec.stderr_path),
            key,
            key=key,
            pure=False,
            retries=0,
        )
        return DaskHandle(self, future, key, spec)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a client of a gone scheduler
            self.client.close()
