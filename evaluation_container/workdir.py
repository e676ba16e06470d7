"""Prepare a job's working directory: its folders, the task's sandbox (downloaded once per
agent), the files the payload reads, a point's checkpoint restored.

The payload controls its run directory (and may run as another, less privileged account): the
agent never follows a link there, so a payload cannot make it read or write elsewhere.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import threading
from pathlib import Path

from phpo.client.agent_api import AgentAPI
from phpo.client.errors import NotFound
from phpo.schemas.archives import ArchiveError, ArchiveLimits, open_beneath, unlink_beneath, write_beneath
from phpo.schemas.jobs import JobPoint
from phpo.schemas.payload import PHPO_DIR

from .checkpoints import restore_checkpoint, safe_extract
from .job_end import JobFailed

log = logging.getLogger("phpo.agent")


class SandboxCache:
    """Sandbox tarballs, downloaded once per agent and shared by its jobs."""

    def __init__(self, api: AgentAPI, cache_dir: Path):
        self.api = api
        self.dir = cache_dir
        self._locks: dict[int, threading.Lock] = {}
        self._lock = threading.Lock()

    def tarball(self, artifact_id: int) -> Path:
        with self._lock:
            lock = self._locks.setdefault(artifact_id, threading.Lock())
        path = self.dir / f"sandbox-{artifact_id}.tar.gz"
        with lock:
            if not path.exists():
                self.api.download_artifact(artifact_id, path)
        return path


class JobWorkdir:
    """One job's folders: ``run/`` (the payload's, owned by its account when it has one),
    ``logs/`` and ``scratch/`` (the agent's)."""

    def __init__(self, root: Path, job_id: int, owner: tuple[int, int] | None, limits: ArchiveLimits):
        self.job_id = job_id
        self.jobdir = root / "jobs" / f"job-{job_id}"
        self.rundir = self.jobdir / "run"
        self.logdir = self.jobdir / "logs"
        self.scratch = self.jobdir / "scratch"
        self.owner = owner
        self.limits = limits

    def create(self) -> None:
        for d in (self.rundir / PHPO_DIR, self.logdir, self.scratch):
            d.mkdir(parents=True, exist_ok=True)
        if self.owner is not None:  # the payload's account owns its working directory, nothing else
            for d in (self.rundir, self.rundir / PHPO_DIR):
                os.chown(d, *self.owner)
            for d in (self.logdir, self.scratch):
                d.chmod(0o700)

    def remove(self) -> None:
        shutil.rmtree(self.jobdir, ignore_errors=True)

    # --- files in the run directory ---------------------------------------------------------

    def write(self, rel: str, text: str) -> None:
        write_beneath(self.rundir, rel, text.encode(), owner=self.owner)

    def unlink(self, rel: str) -> None:
        unlink_beneath(self.rundir, rel)

    def copy_out(self, rel: str, max_bytes: int | None = None) -> Path | None:
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
                log.warning("job %d: %s is over %d bytes; not uploaded", self.job_id, rel, max_bytes)
                return None
            with open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
        return dest

    # --- what the server hands over ---------------------------------------------------------

    def unpack_sandbox(self, sandboxes: SandboxCache, artifact_id: int | None, agent_name: str) -> None:
        """Unpack the job's sandbox into its run directory; raises :class:`JobFailed` (for good,
        the message naming the member at fault) when the sandbox is refused."""
        if artifact_id is None:
            return
        try:
            safe_extract(sandboxes.tarball(artifact_id), self.rundir, self.limits, self.owner)
        except (ArchiveError, NotFound) as e:
            why = (
                "is missing on the server"
                if isinstance(e, NotFound)
                else f"was not unpacked on agent {agent_name}"
            )
            log.error("job %d: the sandbox (artifact %d) %s: %s", self.job_id, artifact_id, why, e)
            raise JobFailed(f"the sandbox (artifact {artifact_id}) {why}: {e}", retry=False) from e

    def restore_checkpoint(
        self, api: AgentAPI, point: JobPoint, checkpoint_to_load: str | None, agent_name: str
    ) -> str | None:
        """Restore ``point``'s checkpoint into the run directory; None when done, else why not
        (the point's attempt fails with that message)."""
        assert point.checkpoint_artifact is not None
        tarball = self.scratch / f"restore-{point.checkpoint_artifact}.tar.gz"
        try:
            api.download_artifact(point.checkpoint_artifact, tarball)
            restore_checkpoint(tarball, self.rundir, checkpoint_to_load, self.limits, self.owner)
        except (ArchiveError, NotFound) as e:
            why = (
                "is missing on the server"
                if isinstance(e, NotFound)
                else f"was not restored on agent {agent_name}"
            )
            log.error(
                "job %d: the checkpoint of point %d (artifact %d) %s: %s",
                self.job_id,
                point.point_id,
                point.checkpoint_artifact,
                why,
                e,
            )
            return (
                f"the checkpoint of point {point.point_id} (artifact {point.checkpoint_artifact}) {why}: {e}"
            )
        log.info(
            "job %d: point %d resumes from checkpoint artifact %d",
            self.job_id,
            point.point_id,
            point.checkpoint_artifact,
        )
        return None
