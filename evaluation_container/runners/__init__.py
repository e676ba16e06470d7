"""Executors: how a command runs (a local process group, or a Docker/podman container)."""

from .base import CONTAINER_WORKDIR, Executor, ExecutorError, RunHandle, RunSpec
from .subprocess import SubprocessExecutor

__all__ = ["CONTAINER_WORKDIR", "Executor", "ExecutorError", "RunHandle", "RunSpec", "SubprocessExecutor"]
