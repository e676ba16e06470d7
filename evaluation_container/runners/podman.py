"""Start and stop a private ``podman system service`` (Docker-compatible API on a socket).

Where no Docker engine runs but podman is installed, ``phpo agent --executor podman`` starts
its own service on a socket under the agent's work directory and stops it (by PID) on exit;
the Docker executor then drives it unchanged. The tests use the same class.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

log = logging.getLogger("phpo.agent.podman")

# What podman needs on machines where crun fails on setrlimit / hybrid cgroups (README, Containers)
CONTAINERS_CONF = """[containers]
default_ulimits = []
[engine]
runtime = "runc"
"""


class PodmanError(RuntimeError):
    pass


class PodmanService:
    def __init__(self, socket_dir: Path, containers_conf: Path | None = None):
        self.socket_dir = Path(socket_dir)
        self.socket = self.socket_dir / "podman.sock"
        self.containers_conf = containers_conf
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"unix://{self.socket}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.containers_conf is not None:
            env["CONTAINERS_CONF"] = str(self.containers_conf)
        return env

    def start(self, timeout: float = 30.0) -> str:
        exe = shutil.which("podman")
        if not exe:
            raise PodmanError("podman is not installed (apt-get install podman runc)")
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if self.socket.exists():
            self.socket.unlink()
        log_path = self.socket_dir / "podman-service.log"
        with open(log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                [exe, "system", "service", "--time=0", self.base_url],
                env=self.env(),
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        from .docker import engine_answers

        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PodmanError(
                    f"podman system service exited {self.proc.returncode}: {log_path.read_text()[-2000:]}"
                )
            if self.socket.exists() and engine_answers(self.base_url):
                return self.base_url
            time.sleep(0.1)
        self.stop()
        raise PodmanError(f"podman system service did not answer on {self.socket} within {timeout} s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass
