"""The executor interface: start a shell command in a working directory, watch it, stop it.

An executor knows *how* a command runs (a local process group, a container); the agent's job
runner knows *what* runs and when to stop it. Keeping the two apart lets one job runner drive
every executor, and lets the executors be tested on their own.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path


class ExecutorError(RuntimeError):
    """The command could not be started at all (no runtime, no image, ...).

    ``retryable`` says whether another agent could do better: a missing container runtime on
    this agent is not retryable *here*, but the agent reports it as final because the job's
    spec asks for something this agent advertised it cannot give.
    """

    def __init__(self, message: str, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class PayloadUser:
    """The account payloads run as (``phpo agent --payload-user``), when the agent runs as root:
    a payload of another uid can read neither the agent's token file nor its /proc files."""

    uid: int
    gid: int
    name: str | None = None
    home: str | None = None

    @property
    def owner(self) -> tuple[int, int]:
        return self.uid, self.gid

    @classmethod
    def parse(cls, text: str) -> PayloadUser:
        """``USER``, ``UID``, ``USER:GROUP`` or ``UID:GID``; ValueError naming what is unknown."""
        import grp
        import pwd

        user, _, group = text.partition(":")
        try:
            pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        except KeyError:
            if not user.isdigit():
                raise ValueError(f"--payload-user: no user {user!r} on this machine") from None
            pw = None
        uid = pw.pw_uid if pw else int(user)
        if group:
            try:
                gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
            except KeyError:
                raise ValueError(f"--payload-user: no group {group!r} on this machine") from None
        elif pw is not None:
            gid = pw.pw_gid
        else:
            raise ValueError(
                f"--payload-user {text}: uid {uid} has no account here; give its group as UID:GID"
            )
        return cls(uid=uid, gid=gid, name=pw.pw_name if pw else None, home=pw.pw_dir if pw else None)


@dataclass
class RunSpec:
    """One command to run. ``workdir`` is a host path; inside a container it is mounted at
    :data:`CONTAINER_WORKDIR`, and ``env`` values naming files are relative to it."""

    command: str
    workdir: Path
    stdout_path: Path
    stderr_path: Path
    env: dict[str, str] = field(default_factory=dict)
    image: str | None = None
    gpus: list[int] | None = None  # None: leave the GPUs as the agent sees them
    network: str = "none"
    # a container run as ``docker run`` would start it (the docker-style steering command):
    # ``argv`` is the command after the image (None: ``/bin/sh -c command``), ``entrypoint``
    # replaces the image's, ``mounts`` (host path -> container path, read-write) replace the
    # working directory's mount at /srv/workDir, ``container_workdir`` is the container's working
    # directory (None: the image's), and the root filesystem is writable as docker's default
    argv: list[str] | None = None
    entrypoint: list[str] | None = None
    mounts: dict[str, str] | None = None
    container_workdir: str | None = None
    user: PayloadUser | None = None  # subprocess executor only: run as this account


CONTAINER_WORKDIR = "/srv/workDir"


class RunHandle(abc.ABC):
    """A started command."""

    @abc.abstractmethod
    def poll(self) -> int | None:
        """The exit status once it has ended, else ``None``. Never blocks for long."""

    @abc.abstractmethod
    def kill(self, grace: float = 5.0) -> None:
        """Stop the command and everything it started: a polite signal first, then, after
        ``grace`` seconds, a hard kill. Safe to call on an ended command."""

    @abc.abstractmethod
    def finish(self) -> None:
        """Called once after the command ended: collect logs, remove leftovers (stray
        background processes of the group, the stopped container)."""

    def wait(self, timeout: float | None = None, interval: float = 0.1) -> int | None:
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            rc = self.poll()
            if rc is not None:
                return rc
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(interval)


class Executor(abc.ABC):
    name: str = "base"

    @abc.abstractmethod
    def start(self, spec: RunSpec) -> RunHandle:
        """Start ``spec.command``; raise :class:`ExecutorError` when it cannot start."""

    def workdir_seen_by_command(self, spec: RunSpec) -> str:
        """The working directory's path as the command sees it."""
        return str(spec.workdir)

    def close(self) -> None:
        """Release what the executor holds (API clients, a service it started)."""
