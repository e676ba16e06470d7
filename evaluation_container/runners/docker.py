"""Run a command in a container through the Docker Engine API (the ``docker`` SDK).

The same code drives a Docker engine and podman's Docker-compatible service (README, Containers):
only the socket differs. The job's working directory is mounted read-write at
``/srv/workDir`` and is the only writable place besides a tmpfs ``/tmp``: the image's root
filesystem is read-only, so a payload cannot leave state behind in the image. Networking is off
(``none``) unless the agent is told the payload must reach the network (``host``).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from phpo.schemas.payload import ENV_GPUS
from phpo.schemas.upstream import container_image

from .base import CONTAINER_WORKDIR, Executor, ExecutorError, RunHandle, RunSpec

log = logging.getLogger("phpo.agent.docker")

# the payload's own stray output beyond this is cut from the log files we keep
_LOG_CHUNK = 64 * 1024


def container_env(spec: RunSpec) -> dict[str, str]:
    """The container's environment: only the job's values (never the agent's own, which may
    hold the agent token), ``HOME`` on the writable tmpfs, and the host GPU indices for
    information. ``CUDA_VISIBLE_DEVICES`` is left to the GPU runtime: inside the container the
    devices it passes are numbered from 0."""
    env = {k: v for k, v in spec.env.items() if k != "CUDA_VISIBLE_DEVICES"}
    env.setdefault("HOME", "/tmp")
    if spec.gpus is not None:
        env[ENV_GPUS] = ",".join(str(g) for g in spec.gpus)
    return env


def container_kwargs(spec: RunSpec, *, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments of ``DockerClient.containers.run`` for ``spec`` (a pure function, so
    the spec can be checked without an engine)."""
    if not spec.image:
        raise ExecutorError("the container executor needs an image (evaluationContainer)", retryable=False)
    if spec.network not in ("none", "host"):
        raise ExecutorError(f"container network must be 'none' or 'host', got {spec.network!r}")
    if spec.argv is not None:
        return _docker_run_kwargs(spec, labels)
    kw: dict[str, Any] = {
        "image": container_image(spec.image),
        "entrypoint": ["/bin/sh", "-c"],
        "command": [spec.command],
        "working_dir": CONTAINER_WORKDIR,
        "volumes": {str(Path(spec.workdir).resolve()): {"bind": CONTAINER_WORKDIR, "mode": "rw"}},
        "environment": container_env(spec),
        "read_only": True,
        "tmpfs": {"/tmp": "rw,exec"},
        "network_mode": spec.network,
        "detach": True,
        "labels": {"phpo": "evaluation", **(labels or {})},
    }
    if spec.gpus:
        import docker.types

        kw["device_requests"] = [
            docker.types.DeviceRequest(device_ids=[str(g) for g in spec.gpus], capabilities=[["gpu"]])
        ]
    return kw


def _docker_run_kwargs(spec: RunSpec, labels: dict[str, str] | None) -> dict[str, Any]:
    """A container as ``docker run [-v SRC:DST] [-w DIR] [--entrypoint E] IMAGE ARGV...`` starts
    it: the image's entrypoint and working directory unless given, a writable container layer
    (removed with the container), only the mounts given."""
    kw: dict[str, Any] = {
        "image": container_image(spec.image or ""),
        "command": list(spec.argv or []),
        "volumes": {
            str(Path(h).resolve()): {"bind": c, "mode": "rw"} for h, c in (spec.mounts or {}).items()
        },
        "environment": container_env(spec),
        "tmpfs": {"/tmp": "rw,exec"},
        "network_mode": spec.network,
        "detach": True,
        "labels": {"phpo": "steering", **(labels or {})},
    }
    if spec.entrypoint is not None:
        kw["entrypoint"] = spec.entrypoint
    if spec.container_workdir:
        kw["working_dir"] = spec.container_workdir
    return kw


class DockerHandle(RunHandle):
    def __init__(self, container: Any, spec: RunSpec):
        self.container = container
        self.spec = spec
        self._rc: int | None = None
        self._error: str | None = None
        self._done = threading.Event()
        self._finished = False
        threading.Thread(target=self._wait, name=f"wait-{container.short_id}", daemon=True).start()

    def _wait(self) -> None:
        # a blocking wait in its own thread: poll() then costs nothing and no API call
        while not self._done.is_set():
            try:
                res = self.container.wait(timeout=3600)
                self._rc = int(res.get("StatusCode", 1))
                if res.get("Error"):
                    self._error = str(res["Error"])
                self._done.set()
            except Exception as e:  # noqa: BLE001 - requests' ReadTimeout, engine errors
                try:
                    self.container.reload()
                    if self.container.status in ("exited", "dead", "stopped"):
                        self._rc = int(self.container.attrs.get("State", {}).get("ExitCode", 1))
                        self._done.set()
                except Exception:  # noqa: BLE001
                    log.warning("lost track of container %s: %s", self.container.short_id, e)
                    self._rc = 125
                    self._error = f"lost track of the container: {e}"
                    self._done.set()

    def poll(self) -> int | None:
        return self._rc if self._done.is_set() else None

    def kill(self, grace: float = 5.0) -> None:
        if self._done.is_set():
            return
        try:
            self.container.stop(timeout=max(1, int(grace)))
        except Exception as e:  # noqa: BLE001
            log.warning("stopping container %s: %s", self.container.short_id, e)
            try:
                self.container.kill()
            except Exception as e2:  # noqa: BLE001
                log.warning("killing container %s: %s", self.container.short_id, e2)
        self._done.wait(timeout=grace + 30)

    def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        for path, out, err in ((self.spec.stdout_path, True, False), (self.spec.stderr_path, False, True)):
            try:
                with open(path, "ab") as f:
                    f.writelines(self.container.logs(stdout=out, stderr=err, stream=True, follow=False))
                    if self._error and err:
                        f.write(f"\n[phpo] container error: {self._error}\n".encode())
            except Exception as e:  # noqa: BLE001
                log.warning("reading logs of container %s: %s", self.container.short_id, e)
        try:
            self.container.remove(force=True)
        except Exception as e:  # noqa: BLE001
            log.warning("removing container %s: %s", self.container.short_id, e)


class DockerExecutor(Executor):
    """``base_url`` names the engine's socket (e.g. ``unix:///run/podman/podman.sock``);
    without one, the environment decides (``DOCKER_HOST``, else ``/var/run/docker.sock``)."""

    def __init__(self, base_url: str | None = None, *, name: str = "docker", timeout: float = 60):
        import docker

        self.name = name
        try:
            if base_url:
                self.client = docker.DockerClient(base_url=base_url, timeout=timeout)
            else:
                self.client = docker.from_env(timeout=timeout)
        except docker.errors.DockerException as e:
            raise ExecutorError(f"no {name} engine: {e}", retryable=False) from e

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except Exception:  # noqa: BLE001
            return False

    def workdir_seen_by_command(self, spec: RunSpec) -> str:
        return CONTAINER_WORKDIR

    def _ensure_image(self, image: str) -> None:
        import docker

        try:
            self.client.images.get(image)
            return
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.APIError as e:
            raise ExecutorError(f"{self.name} engine error looking up image {image}: {e}") from e
        try:
            log.info("pulling image %s", image)
            self.client.images.pull(image)
        except docker.errors.APIError as e:
            raise ExecutorError(f"image {image} is not on this agent and cannot be pulled: {e}") from e

    def start(self, spec: RunSpec) -> DockerHandle:
        import docker

        kw = container_kwargs(spec)
        self._ensure_image(kw["image"])
        spec.stdout_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            container = self.client.containers.run(**kw)
        except docker.errors.DockerException as e:
            raise ExecutorError(f"{self.name} could not start {spec.image}: {e}") from e
        return DockerHandle(container, spec)

    def close(self) -> None:
        try:
            self.client.close()
        except Exception as e:  # noqa: BLE001
            log.debug("closing the engine client: %s", e)


def engine_answers(base_url: str | None = None) -> bool:
    """Whether a Docker-API engine answers at ``base_url`` (or the environment's default)."""
    try:
        ex = DockerExecutor(base_url, timeout=3)
    except ExecutorError:
        return False
    try:
        return ex.ping()
    finally:
        ex.close()
