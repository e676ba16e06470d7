"""The keeper of the embedded stack: the children of ``phpo up`` end when it ends, however it ends.

``phpo up`` starts its server, agent and MLflow each in a session of their own (so a Ctrl-C
reaches only ``phpo up``, which then stops the agent first and the server last). A session of
their own also means nothing stops them when ``phpo up`` dies without cleaning up (``kill -9``,
a killed process group, an OOM kill). This keeper closes that gap: ``phpo up`` starts it first,
in a session of its own too, and tells it on its stdin, one line each, ``NAME PID`` of every child
it starts (the child's process group id is its pid). The keeper only reads. When its stdin
ends, ``phpo up`` is gone (the kernel closes the pipe whichever way a process dies): the
keeper stops every group still alive, the last announced first (``phpo up`` starts MLflow,
the server, then the agent: the agent stops first, while the server can still take its jobs
back), SIGTERM first and SIGKILL after a grace period, then exits. After a clean stop the groups are already gone and it exits at once.

Run as ``python -m phpo.client.cli.keeper [--grace SECONDS]``; nothing here imports the client.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs. Zombies do not count: once ``phpo up`` is
    gone its children are reparented, and where PID 1 does not reap (a container) they would
    look alive for ever."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ...
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def stop_group(pgid: int, grace: float) -> None:
    """SIGTERM the group, wait up to ``grace`` seconds, then SIGKILL what is left."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m phpo.client.cli.keeper")
    p.add_argument(
        "--grace",
        type=float,
        default=40.0,
        help="seconds a group may take after SIGTERM before SIGKILL (default 40: the agent's "
        "30 s for running jobs and its 5 s to stop a payload)",
    )
    args = p.parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGHUP):  # a terminal's signals are for phpo up, not for us
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.stdin.close())
    groups: list[tuple[str, int]] = []
    try:
        for line in sys.stdin:
            name, _, pid = line.strip().partition(" ")
            if pid.isdigit():
                groups.append((name, int(pid)))
    except (OSError, ValueError):
        pass
    for _name, pgid in reversed(groups):
        if group_alive(pgid):
            stop_group(pgid, args.grace)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
