"""The default executor: ``bash -c COMMAND`` in the working directory, in its own session.

The command gets a new session (``start_new_session``), so it and everything it forks share a
process group the agent can kill as a whole on timeout or cancel: a payload that spawns
workers or a data loader does not leave them behind. ``PR_SET_PDEATHSIG`` makes the kernel kill
the command when the agent dies (``kill -9``), so a crashed agent leaves no orphan training on
a GPU it no longer accounts for. It is set by util-linux's ``setpriv --pdeathsig KILL`` (which
then execs the shell: same pid) where that exists, because a Python ``preexec_fn`` forces a
full fork of the agent and costs ~3 ms of the agent's time per payload start (1.3 ms with
setpriv, measured); elsewhere by ``prctl()`` in a ``preexec_fn``.
"""

from __future__ import annotations

import ctypes
import functools
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .base import Executor, ExecutorError, PayloadUser, RunHandle, RunSpec

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
SECRET_ENV = ("PHPO_TOKEN", "PHPO_TOKEN_FILE")  # and every other PHPO_TOKEN* name


def _load_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:  # loaded here, in the agent: a dlopen() between fork and exec is not safe
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except OSError:
        return None


_prctl = _load_prctl()


def protect_process() -> bool:
    """``prctl(PR_SET_DUMPABLE, 0)`` on this process: its /proc files (environ, mem, maps, ...)
    become root's, and other processes of the same uid can neither read them nor ptrace it. So a
    payload of the agent's own (non-root) uid cannot read the agent's initial environment, where
    a ``PHPO_TOKEN`` stays visible even after it is removed from ``os.environ``. Root payloads
    are not stopped by it (``--payload-user``). False where it is not available."""
    if _prctl is None:
        return False
    return _prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0


def _child_setup() -> None:  # pragma: no cover - runs in the child between fork and exec
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@functools.cache
def _setpriv() -> str | None:
    """``setpriv`` when it exists and knows ``--pdeathsig`` (util-linux >= 2.33)."""
    exe = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    if exe is None:
        return None
    try:
        ok = (
            subprocess.run(
                [exe, "--pdeathsig", "KILL", "--", "true"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=10,
            ).returncode
            == 0
        )
    except (OSError, subprocess.SubprocessError):
        ok = False
    return exe if ok else None


def command_env(spec: RunSpec, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a local run: the agent's own, plus the job's ``PHPO_*`` values and,
    when the agent assigns GPUs, ``CUDA_VISIBLE_DEVICES`` (empty = no GPU at all)."""
    env = dict(os.environ if base is None else base)
    for name in list(env):  # the agent's credentials are not the payload's business
        if name in SECRET_ENV or name.startswith("PHPO_TOKEN"):
            del env[name]
    if spec.user is not None:
        env.update(
            {
                k: v
                for k, v in (("HOME", spec.user.home), ("USER", spec.user.name), ("LOGNAME", spec.user.name))
                if v
            }
        )
    env.update(spec.env)
    if spec.gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in spec.gpus)
    return env


def live_group_members(pgid: int) -> list[int] | None:
    """PIDs of the non-zombie processes of group ``pgid`` (from /proc); ``None`` without /proc."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return None
    out = []
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 3 and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            out.append(int(d.name))
    return out


def _groups(user: PayloadUser) -> list[int]:
    """The supplementary groups of the payload's account (none for a bare uid)."""
    return os.getgrouplist(user.name, user.gid) if user.name else []


def _setpriv_user(user: PayloadUser | None) -> list[str]:
    if user is None:
        return []
    groups = _groups(user)
    return [
        f"--reuid={user.uid}",
        f"--regid={user.gid}",
        f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups",
    ]


class _Fd:
    """A raw file descriptor that ``finish`` closes with the log files."""

    def __init__(self, fd: int):
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class SubprocessHandle(RunHandle):
    def __init__(self, proc: subprocess.Popen, files: list):
        self.proc = proc
        self.pgid = proc.pid  # start_new_session: the child leads its own group
        self._files = files
        # a pidfd becomes readable the moment the process exits: waiting on it wakes at once,
        # where Popen.wait(timeout) sleeps in steps of up to 50 ms (25 ms of a slot lost per
        # evaluation on average, 2.5 % of a 1-second payload)
        self._pidfd: int | None = None
        if hasattr(os, "pidfd_open"):
            try:
                self._pidfd = os.pidfd_open(proc.pid)
                self._files.append(_Fd(self._pidfd))
            except OSError:  # an old kernel (< 5.3) or a sandbox without the syscall
                self._pidfd = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float | None = None, interval: float = 0.1) -> int | None:
        rc = self.proc.poll()
        if rc is not None or self._pidfd is None:
            try:
                return rc if rc is not None else self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return None
        poller = select.poll()  # not select(): fds above 1024 are fine
        poller.register(self._pidfd, select.POLLIN)
        try:
            ready = bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000))))
        except OSError:  # the fd was closed by finish() meanwhile
            ready = True
        return self.proc.poll() if ready else None

    def _killpg(self, sig: int) -> bool:
        try:
            os.killpg(self.pgid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def _group_alive(self) -> bool:
        """Whether a live (non-zombie) process is left in the group. A killed grandchild whose
        parent is gone waits as a zombie until PID 1 reaps it, which some container inits never
        do; it is dead all the same and must not make us wait out the whole grace period."""
        if not self._killpg(0):
            return False
        members = live_group_members(self.pgid)
        return True if members is None else bool(members)

    def kill(self, grace: float = 5.0) -> None:
        if not self._killpg(signal.SIGTERM):
            self.proc.poll()
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            self.proc.poll()  # reap the leader, else it stays a zombie member of the group
            if not self._group_alive():
                break
            time.sleep(0.05)
        self._killpg(signal.SIGKILL)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process in D state
            pass

    def finish(self) -> None:
        # background processes the command left in its group go with it
        self._killpg(signal.SIGKILL)
        for f in self._files:
            try:
                f.close()
            except OSError:
                pass


class SubprocessExecutor(Executor):
    name = "subprocess"

    def __init__(self, shell: str | None = None):
        self.shell = shell or shutil.which("bash") or "/bin/sh"

    def start(self, spec: RunSpec) -> SubprocessHandle:
        spec.stdout_path.parent.mkdir(parents=True, exist_ok=True)
        spec.stderr_path.parent.mkdir(parents=True, exist_ok=True)
        # handed to the child and closed in finish(), not in this scope
        out = open(spec.stdout_path, "ab")  # noqa: SIM115
        err = open(spec.stderr_path, "ab")  # noqa: SIM115
        try:
            setpriv = _setpriv()
            argv = [self.shell, "-c", spec.command]
            user: dict = {}
            if setpriv:
                argv = [setpriv, "--pdeathsig", "KILL", *_setpriv_user(spec.user), "--", *argv]
            elif spec.user is not None:
                user = {"user": spec.user.uid, "group": spec.user.gid, "extra_groups": _groups(spec.user)}
            proc = subprocess.Popen(
                argv,
                cwd=spec.workdir,
                env=command_env(spec),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                preexec_fn=None if setpriv else _child_setup,  # noqa: PLW1509 - only prctl(), async-signal-safe
                close_fds=True,
                **user,
            )
        except OSError as e:
            out.close()
            err.close()
            raise ExecutorError(f"cannot start '{self.shell} -c ...' in {spec.workdir}: {e}") from e
        return SubprocessHandle(proc, [out, err])
