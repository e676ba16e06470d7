"""What this machine offers, as the agent advertises it on ``acquire``.

The server matches ``--architecture`` (``#x86_64-*-avx2&nvidia:vram>=40960``) and ``--site``
against these values, so they must describe what a job will really get: the GPUs listed are
those of the slot the job will run in, not every GPU of the host.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
from pathlib import Path

from phpo.schemas.jobs import AgentResources, GPUInfo

log = logging.getLogger("phpo.agent.resources")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """CPU feature flags (x86 ``flags``, ARM ``Features``) of the first CPU, sorted."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return sorted(set(value.split()))
    return []


def memory_mb() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().total // (1024 * 1024))
    except ImportError:  # pragma: no cover - psutil is in the agent extra
        try:
            return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024))
        except (ValueError, OSError):
            return 0


def nvml_gpus() -> list[GPUInfo] | None:
    """GPUs seen through NVML (``nvidia-ml-py``); ``None`` when NVML is missing or fails, which
    is the normal case on a machine without an NVIDIA driver."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception as e:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, ...
        log.info("NVML unavailable: %s", e)
        return None
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            if isinstance(name, bytes):
                name = name.decode()
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            out.append(GPUInfo(index=i, vendor="nvidia", model=str(name), memory_mb=int(mem.total // 2**20)))
        return out
    except Exception as e:  # noqa: BLE001
        log.warning("NVML query failed: %s", e)
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception as e:  # noqa: BLE001
            log.debug("nvmlShutdown: %s", e)


def resolve_gpus(spec: str) -> list[GPUInfo] | None:
    """``--gpus``: ``auto`` (NVML; ``None`` when it sees nothing, which leaves the jobs'
    environment as it is), ``none`` (an empty list: jobs get ``CUDA_VISIBLE_DEVICES=""``), or
    a comma-separated index list (described through NVML where it can)."""
    spec = spec.strip().lower()
    if spec == "auto":
        found = nvml_gpus()
        return found or None
    if spec in ("none", ""):
        return []
    try:
        indices = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--gpus must be 'auto', 'none' or a list like '0,1', got {spec!r}") from None
    if any(i < 0 for i in indices) or len(set(indices)) != len(indices):
        raise ValueError(f"--gpus: indices must be distinct and >= 0, got {spec!r}")
    known = {g.index: g for g in (nvml_gpus() or [])}
    return [known.get(i, GPUInfo(index=i)) for i in indices]


def container_runtimes_installed() -> list[str]:
    """Container command-line tools present (not necessarily usable); for the log only."""
    return [n for n in ("docker", "podman", "apptainer", "singularity", "ch-run") if shutil.which(n)]


def base_resources(container_runtimes: list[str]) -> AgentResources:
    return AgentResources(
        arch=platform.machine() or "unknown",
        cpu_flags=cpu_flags(),
        cpus=os.cpu_count() or 1,
        memory_mb=memory_mb(),
        gpus=[],
        container_runtimes=container_runtimes,
    )
