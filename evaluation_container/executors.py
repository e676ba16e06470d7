"""The executors an agent runs payloads with: a local process always, a container engine when
one answers (or was asked for), the Dask cluster for evaluations with ``--executor dask``."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .resources import container_runtimes_installed
from .runners.base import Executor, ExecutorError
from .runners.subprocess import SubprocessExecutor

if TYPE_CHECKING:
    from .agent import AgentConfig

log = logging.getLogger("phpo.agent")


class Executors:
    def __init__(self, cfg: AgentConfig, workdir: Path):
        self.cfg = cfg
        self.workdir = workdir
        self.subprocess: Executor = SubprocessExecutor()
        self.container: Executor | None = None
        self.evaluation: Executor | None = None  # --executor dask: evaluations on the cluster
        self._podman: Any = None

    def setup(self) -> None:
        """Find the container engine this agent can use; raises ExecutorError when one was
        asked for (``--executor docker|podman``) and does not work."""
        kind = self.cfg.executor
        setups = {
            "subprocess": self._find_docker,
            "docker": self._docker,
            "podman": self._podman_engine,
            "dask": self._dask,
        }
        if kind not in setups:
            raise ExecutorError(f"unknown executor {kind!r} (subprocess, docker, podman, dask)")
        setups[kind]()
        if self.container is None:
            found = container_runtimes_installed()
            log.info(
                "no container engine answers: jobs that name a container will fail%s",
                f" (installed but not serving: {', '.join(found)})" if found else "",
            )
        else:
            log.info("container jobs run with %s", self.container.name)

    def _find_docker(self) -> None:
        """A Docker engine if one answers (subprocess payloads either way)."""
        from .runners.docker import DockerExecutor

        url = self.cfg.docker_url
        if not (url or os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists()):
            return
        try:
            ex = DockerExecutor(url, name="docker", timeout=10)
            if ex.ping():
                self.container = ex
            else:
                ex.close()
        except ExecutorError:
            pass

    def _docker(self) -> None:
        from .runners.docker import DockerExecutor

        ex = DockerExecutor(self.cfg.docker_url, name="docker")
        if not ex.ping():
            raise ExecutorError(
                f"--executor docker: no Docker engine answers at "
                f"{self.cfg.docker_url or os.environ.get('DOCKER_HOST') or 'the default socket'}"
            )
        self.container = ex

    def _podman_engine(self) -> None:
        from .runners.docker import DockerExecutor

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
        self.container = ex

    def _dask(self) -> None:
        from .runners.dask import DaskExecutor

        if not self.cfg.scheduler:
            raise ExecutorError(
                "--executor dask needs --scheduler ADDRESS (tcp://HOST:8786)", retryable=False
            )
        dask = DaskExecutor(self.cfg.scheduler)
        self.evaluation = dask
        log.info(
            "evaluations run on the Dask cluster at %s (%d workers)", self.cfg.scheduler, len(dask.workers())
        )

    def executor_for(self, image: str | None, evaluation: bool = False) -> Executor:
        """The executor of a job: a container engine for an image, else the Dask cluster for
        evaluations with ``--executor dask``, else a local process (steering always runs here)."""
        if not image:
            if evaluation and self.evaluation is not None:
                return self.evaluation
            return self.subprocess
        if self.container is None:
            raise ExecutorError(
                f"the task asks for the container {image!r} but this agent ({self.cfg.name} at site "
                f"{self.cfg.site}) has no container runtime: no Docker engine answers and "
                "--executor docker|podman was not given",
                retryable=False,
            )
        return self.container

    def close(self) -> None:
        for ex in (self.container, self.evaluation, self.subprocess):
            if ex is not None:
                ex.close()
        if self._podman is not None:
            self._podman.stop()
