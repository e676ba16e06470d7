"""Helpers for the agent tests: the agent as a real subprocess, tasks submitted over HTTP,
payloads as small Python scripts written by each test. (Fixtures live in conftest.py.)"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable

GRID_X = {"params": {"x": {"type": "int", "low": 0, "high": 3}}}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_payload(path: Path, body: str) -> Path:
    """A payload script; ``body`` is dedented Python."""
    path.write_text(textwrap.dedent(body).lstrip())
    return path


@dataclass
class AgentProc:
    """``python -m phpo.evaluation_container`` as a real process (its own session, so a
    kill -9 of the agent is a kill of the agent only, as on a real node)."""

    proc: subprocess.Popen
    log_path: Path
    workdir: Path
    args: list[str] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"agent did not exit within {timeout} s; log:\n{self.log()[-6000:]}"
            ) from None

    def stop(self) -> None:
        """SIGTERM (drain), a second SIGTERM (no grace) if it lingers, then SIGKILL."""
        for sig, wait in ((signal.SIGTERM, 3), (signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            if self.proc.poll() is not None:
                return
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue

    def wait_log(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"agent log never showed {text!r}; log:\n{self.log()[-6000:]}")


def submit(server, spec: dict[str, Any]) -> int:
    with server.client() as c:
        r = c.post("/tasks", json=spec)
        assert r.status_code == 201, r.text
        return r.json()["id"]


def get_task(server, task_id: int) -> dict:
    with server.client() as c:
        r = c.get(f"/tasks/{task_id}")
        assert r.status_code == 200, r.text
        return r.json()


def get_points(server, task_id: int) -> list[dict]:
    with server.client() as c:
        r = c.get(f"/tasks/{task_id}/points", params={"limit": 1000})
        assert r.status_code == 200, r.text
        return sorted(r.json()["items"], key=lambda p: p["serial"])


def get_artifacts(server, task_id: int, kind: str | None = None) -> list[dict]:
    with server.client() as c:
        params: dict[str, Any] = {"limit": 1000}
        if kind:
            params["kind"] = kind
        r = c.get(f"/tasks/{task_id}/artifacts", params=params)
        assert r.status_code == 200, r.text
        return r.json()["items"]


def wait_until(
    cond: Callable[[], Any], timeout: float, what: str, on_fail: Callable[[], str] = lambda: ""
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{on_fail()}")


def wait_task(
    server,
    task_id: int,
    states=("finished", "failed", "cancelled"),
    timeout: float = 60,
    agents: tuple[AgentProc, ...] = (),
) -> dict:
    def diag() -> str:
        t = get_task(server, task_id)
        out = [f"task: {t['state']} {t['counts']} {t.get('message')}"]
        for a in agents:
            out.append(f"--- agent log ---\n{a.log()[-5000:]}")
        out.append(f"--- server log ---\n{server.log()[-3000:]}")
        return "\n".join(out)

    return wait_until(
        lambda: (t := get_task(server, task_id))["state"] in states and t,
        timeout,
        f"task {task_id} to reach {states}",
        diag,
    )


def sandbox_upload(server, files: dict[str, str]) -> int:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    with server.client() as c:
        r = c.put("/sandboxes", content=buf.getvalue(), params={"name": "sandbox.tar.gz"})
        assert r.status_code == 201, r.text
        return r.json()["id"]


def base_spec(exec_: str, **kw: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "evaluationExec": exec_,
        "optimizer": "grid",
        "searchSpace": GRID_X,
        "maxPoints": 4,
        "nParallelEvaluation": 1,
    }
    spec.update(kw)
    return spec


def pid_alive(pid: int) -> bool:
    """Alive = exists and is not a zombie (a zombie is dead, only not reaped yet)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())


def podman_usable() -> str | None:
    """None when podman can run containers here, else why not."""
    if not shutil.which("podman"):
        return "podman is not installed (apt-get install -y podman runc busybox-static)"
    if not shutil.which("runc"):
        return "runc is not installed (apt-get install -y runc)"
    if not Path("/bin/busybox").exists():
        return "busybox-static is not installed (needed to build a test image without a registry)"
    return None


def _tar_add(
    tar: tarfile.TarFile, name: str, kind: str = "file", target: str = "", data: bytes = b""
) -> None:
    info = tarfile.TarInfo(name)
    info.mode = 0o755 if kind == "dir" else 0o644
    if kind == "dir":
        info.type = tarfile.DIRTYPE
    elif kind in ("symlink", "hardlink"):
        info.type, info.linkname = (tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE), target
    else:
        info.size = len(data)
    tar.addfile(info, io.BytesIO(data) if kind == "file" else None)


def escaping_tarball(path: Path, dest: Path, levels_up: int, name: str, data: bytes) -> Path:
    """A tarball that, unpacked into ``dest`` by Python 3.11.7's ``extractall(filter="data")``,
    writes ``name`` ``levels_up`` directories above ``dest`` (CVE-2025-4517): a chain of
    symlinked directories whose resolved path is just under PATH_MAX, a last link that pushes it
    over (``os.path.realpath`` then stops resolving, so the filter sees a harmless path), links
    climbing one level each through it, and a file written through the last of them. Its first
    member is a symbolic link; it also holds a plain ``../`` member at the end."""
    steps = "abcdefghijklmnop"
    width = (os.pathconf("/", "PC_PATH_MAX") - len(str(dest)) - 1) // (len(steps) + 1)
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        deep = ""
        for s in steps:
            _tar_add(tar, os.path.join(deep, "d" * width), "dir")
            _tar_add(tar, os.path.join(deep, s), "symlink", "d" * width)
            deep = os.path.join(deep, "d" * width)
        over = os.path.join(*steps, "l" * 254)
        _tar_add(tar, over, "symlink", os.path.join(*[".."] * len(steps)))
        prev = over
        for k in range(1, levels_up + 1):
            _tar_add(tar, f"up{k}", "symlink", os.path.join(prev, ".."))
            prev = f"up{k}"
        _tar_add(tar, f"{prev}/{name}", data=data)
        _tar_add(tar, f"../{name}", data=data)
    return path
