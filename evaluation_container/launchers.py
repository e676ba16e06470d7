"""Launchers: a point trained by several processes on one agent (``--launcher torchrun
--nProcessesPerPoint N``).

The agent wraps the task's ``evaluationExec`` in PyTorch's own ``torchrun`` (non-elastic: one
node, ``--max-restarts 0``): every rank runs ``bash -c EXEC`` in the job directory with torchrun's
``RANK``/``LOCAL_RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``, and with one GPU of the
slot each (``CUDA_VISIBLE_DEVICES``, round robin when the slot has fewer GPUs than ranks). The
rendezvous is on loopback: torchrun's stores would listen on every interface of the machine,
so where the agent's own Python has torch, torchrun runs through this module, which hands each
store a socket bound to the rendezvous address only (``TCPStore(master_listen_fd=...)``);
elsewhere the ``torchrun`` on the PATH runs as it is, with a warning in the agent's log. The
payload checkpoints and reports from rank 0 (``examples/distributed/ddp_train.py``); one rank
that dies ends the run (torchrun stops the others) and the attempt fails, so the point resumes
from its checkpoint in the next attempt.

    python -m phpo.evaluation_container.launchers torchrun [torchrun's own arguments]
"""

from __future__ import annotations

import importlib.util
import logging
import shlex
import shutil
import socket
import sys
from typing import Any

log = logging.getLogger("phpo.agent")

LAUNCHERS = ("none", "torchrun")
LOOPBACK = "127.0.0.1"
_STORE_ARGS = ("host_name", "port", "world_size", "is_master", "timeout", "wait_for_workers", "multi_tenant",
               "master_listen_fd", "use_libuv")


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def rank_prefix(gpus: list[int] | None) -> str:
    """Shell text that gives each rank its GPU from the slot's list by ``LOCAL_RANK``."""
    if not gpus:
        return ""
    table = " ".join(str(g) for g in gpus)
    return (f"__g=({table}); export CUDA_VISIBLE_DEVICES=${{__g[$((LOCAL_RANK % {len(gpus)}))]}}; unset __g; ")


def torchrun_command(command: str, processes: int, gpus: list[int] | None = None, *, port: int | None = None,
                     container: bool = False) -> str:
    """The shell command the agent runs in place of ``command`` for ``--launcher torchrun``."""
    port = port or free_loopback_port()
    if not container and importlib.util.find_spec("torch") is not None:
        launcher = [sys.executable, "-m", "phpo.evaluation_container.launchers", "torchrun"]
    else:
        exe = "torchrun" if container else shutil.which("torchrun")
        if exe is None:
            raise FileNotFoundError("--launcher torchrun: torchrun is not installed where this agent runs "
                                    "(pip install torch)")
        if not container:
            log.warning("torch is not in the agent's own environment: %s runs as it is, and its rendezvous "
                        "stores listen on every interface of this machine", exe)
        launcher = [exe]
    rank_cmd = rank_prefix(gpus) + command
    argv = [*launcher, "--nnodes", "1", "--nproc-per-node", str(processes), "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"{LOOPBACK}:{port}", "--local-addr", LOOPBACK, "--max-restarts", "0", "--no-python", "bash", "-c", rank_cmd]
    return shlex.join(argv)


def _loopback_stores() -> None:
    """Make every TCPStore server torchrun starts listen on its own host address only."""
    import torch.distributed as dist

    original = dist.TCPStore

    def store(*args: Any, **kw: Any) -> Any:
        bound = dict(zip(_STORE_ARGS[: len(args)], args, strict=True))
        bound.update(kw)
        if bound.get("is_master") and bound.get("master_listen_fd") is None:
            host = socket.gethostbyname(str(bound.get("host_name") or LOOPBACK))
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, int(bound.get("port") or 0)))
            s.listen(2048)
            bound["port"] = s.getsockname()[1]
            bound["master_listen_fd"] = s.detach()  # the store owns the descriptor from here
        return original(**bound)

    dist.TCPStore = store  # type: ignore[misc,assignment]
    for name in ("torch.distributed.elastic.rendezvous.c10d_rendezvous_backend",
                 "torch.distributed.elastic.rendezvous.static_tcp_rendezvous",
                 "torch.distributed.elastic.utils.distributed", "torch.distributed.rendezvous"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if getattr(module, "TCPStore", None) is original:
            module.TCPStore = store


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "torchrun":
        raise SystemExit("usage: python -m phpo.evaluation_container.launchers torchrun [torchrun arguments]")
    _loopback_stores()
    from torch.distributed.run import main as torchrun_main

    torchrun_main(argv[1:])


if __name__ == "__main__":
    main()
