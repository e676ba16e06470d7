"""Fixtures of the agent tests: ``start_agent`` (the agent as a real subprocess) and
``podman_service`` (a private podman Docker-API service, where podman works here)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from .agent_helpers import PY, AgentProc, podman_usable


@pytest.fixture
def start_agent(tmp_path):
    agents: list[AgentProc] = []

    def _start(
        server,
        *args: str,
        site: str = "local",
        workdir: Path | None = None,
        token: str | None = None,
        env: dict | None = None,
        token_file: Path | None = None,
    ) -> AgentProc:
        n = len(agents)
        wd = workdir or tmp_path / f"agent{n}"
        wd.mkdir(parents=True, exist_ok=True)
        log_path = tmp_path / f"agent{n}-{int(time.time() * 1000)}.log"
        if token_file is None:  # the token goes in a file, never on the command line
            token_file = tmp_path / f"agent{n}.token"
            token_file.write_text(token or server.agent_token)
            token_file.chmod(0o600)
        full = [
            PY,
            "-m",
            "phpo.evaluation_container",
            "--server",
            server.url,
            "--token-file",
            str(token_file),
            "--site",
            site,
            "--workdir",
            str(wd),
            "--poll-interval",
            "0.3",
            "--name",
            f"test-agent-{n}",
            *args,
        ]
        with open(log_path, "w") as logf:
            proc = subprocess.Popen(
                full,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        a = AgentProc(proc, log_path, wd, full)
        agents.append(a)
        return a

    yield _start
    for a in agents:
        a.stop()


TEST_IMAGE = "localhost/phpo-agent-test:latest"


@dataclass
class PodmanEnv:
    base_url: str
    image: str
    conf: Path


@pytest.fixture(scope="session")
def podman_service(tmp_path_factory):
    """A real ``podman system service`` on a socket in a temp dir, with a busybox image built
    without any registry (README, Containers). Skipped, loudly, where podman cannot run here."""
    reason = podman_usable()
    if reason:
        msg = f"SKIPPING CONTAINER TESTS: {reason}"
        print("\n" + msg, file=sys.stderr)
        pytest.skip(msg)
    from phpo.evaluation_container.runners.podman import CONTAINERS_CONF, PodmanError, PodmanService

    d = tmp_path_factory.mktemp("podman")
    conf = d / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    rootfs = d / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "bin" / "busybox").write_bytes(Path("/bin/busybox").read_bytes())
    (rootfs / "bin" / "busybox").chmod(0o755)
    for tool in ("sh", "echo", "cat", "sleep", "ls", "touch", "sed", "id", "env", "grep"):
        (rootfs / "bin" / tool).symlink_to("busybox")
    tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True, check=True).stdout
    p = subprocess.run(
        ["podman", "import", "-", TEST_IMAGE],
        input=tar,
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )
    if p.returncode != 0:
        msg = f"SKIPPING CONTAINER TESTS: podman import failed: {p.stderr.decode()[-1000:]}"
        print("\n" + msg, file=sys.stderr)
        pytest.skip(msg)
    svc = PodmanService(d / "svc", containers_conf=conf)
    try:
        url = svc.start()
    except PodmanError as e:
        msg = f"SKIPPING CONTAINER TESTS: {e}"
        print("\n" + msg, file=sys.stderr)
        pytest.skip(msg)
    yield PodmanEnv(url, TEST_IMAGE, conf)
    svc.stop()
    assert svc.proc is not None and svc.proc.poll() is not None, "podman service still running"
    subprocess.run(["podman", "rmi", "-f", TEST_IMAGE], check=False, capture_output=True, env=env, timeout=60)
