"""Launchers: a point trained by several processes on one agent (``--launcher torchrun|horovodrun|dask
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

``horovodrun`` runs ``horovodrun -np N -H localhost:N --gloo --network-interfaces lo`` where
Horovod is installed (each rank's GPU by ``HOROVOD_LOCAL_RANK``). ``dask`` starts a Dask
``LocalCluster`` of N single-threaded worker processes for the point, its scheduler and workers on
loopback with no dashboard, runs ``EXEC`` once with ``DASK_SCHEDULER_ADDRESS`` set (so a plain
``distributed.Client()`` in the payload connects to it) and closes the cluster when the payload
ends; the payload's exit status is the point's.

    python -m phpo.evaluation_container.launchers torchrun [torchrun's own arguments]
    python -m phpo.evaluation_container.launchers horovodrun [horovodrun's own arguments]
    python -m phpo.evaluation_container.launchers dask --workers N COMMAND
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

from phpo.schemas.payload import ENV_ELASTIC_SINCE

log = logging.getLogger("phpo.agent")

LAUNCHERS = ("none", "torchrun", "horovodrun", "dask")
LOOPBACK = "127.0.0.1"
# seconds a round of an elastic point's rendezvous waits for more agents once it has MIN
ELASTIC_LAST_CALL_S = 5
_STORE_ARGS = (
    "host_name",
    "port",
    "world_size",
    "is_master",
    "timeout",
    "wait_for_workers",
    "multi_tenant",
    "master_listen_fd",
    "use_libuv",
)


def free_loopback_port(host: str = LOOPBACK) -> int:
    """A port free on ``host`` now (loopback unless the agent's --rendezvous-host says otherwise)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def rank_prefix(gpus: list[int] | None, local_rank: str = "LOCAL_RANK") -> str:
    """Shell text that gives each rank its GPU from the slot's list by its local rank variable."""
    if not gpus:
        return ""
    table = " ".join(str(g) for g in gpus)
    return (
        f"__g=({table}); export CUDA_VISIBLE_DEVICES=${{__g[$(({local_rank} % {len(gpus)}))]}}; unset __g; "
    )


def launch_command(
    launcher: str,
    command: str,
    processes: int,
    gpus: list[int] | None = None,
    *,
    container: bool = False,
    rendezvous: Rendezvous | None = None,
) -> str:
    """The shell command the agent runs for a point of a task with ``--launcher LAUNCHER``.

    Raises FileNotFoundError when the launcher's tooling is not where the agent runs (another agent
    may have it), ValueError when the launcher cannot be used this way at all."""
    if rendezvous is not None and launcher != "torchrun":
        raise ValueError(f"a point on several agents needs --launcher torchrun, not {launcher}")
    if launcher == "none":
        return command
    if launcher == "torchrun":
        return torchrun_command(command, processes, gpus, container=container, rendezvous=rendezvous)
    if launcher == "horovodrun":
        return horovodrun_command(command, processes, gpus, container=container)
    if launcher == "dask":
        return dask_command(command, processes, container=container)
    raise ValueError(f"this agent does not know the launcher {launcher!r}")


def horovodrun_command(
    command: str, processes: int, gpus: list[int] | None = None, *, container: bool = False
) -> str:
    """``horovodrun`` on one host, Gloo controller on the loopback interface.

    Where the agent's own Python has Horovod, horovodrun runs through this module, which makes its
    rendezvous and service sockets listen on 127.0.0.1 only (horovodrun's own bind every
    interface); elsewhere the ``horovodrun`` on the PATH runs as it is, with a warning."""
    if not container and importlib.util.find_spec("horovod") is not None:
        launcher = [sys.executable, "-m", "phpo.evaluation_container.launchers", "horovodrun"]
    else:
        exe = "horovodrun" if container else shutil.which("horovodrun")
        if exe is None:
            raise FileNotFoundError(
                "--launcher horovodrun: horovodrun is not installed where this agent runs "
                "(pip install horovod, built with Gloo: make horovod)"
            )
        if not container:
            log.warning(
                "horovod is not in the agent's own environment: %s runs as it is, and its rendezvous "
                "server listens on every interface of this machine",
                exe,
            )
        launcher = [exe]
    argv = [
        *launcher,
        "-np",
        str(processes),
        "-H",
        f"localhost:{processes}",
        "--gloo",
        "--network-interfaces",
        "lo",
        "bash",
        "-c",
        rank_prefix(gpus, "HOROVOD_LOCAL_RANK") + command,
    ]
    return shlex.join(argv)


def dask_command(command: str, processes: int, *, container: bool = False) -> str:
    """A Dask cluster of ``processes`` workers on loopback for the point, torn down when it ends."""
    if container:
        raise ValueError(
            "--launcher dask runs the cluster in the agent's own environment: it cannot be "
            "combined with an evaluation container (use --launcher none and start a "
            "LocalCluster inside the container)"
        )
    if importlib.util.find_spec("distributed") is None:
        raise FileNotFoundError(
            "--launcher dask: dask.distributed is not installed where this agent runs "
            "(pip install 'phpo[dask]')"
        )
    return shlex.join(
        [
            sys.executable,
            "-m",
            "phpo.evaluation_container.launchers",
            "dask",
            "--workers",
            str(processes),
            command,
        ]
    )


@dataclass(frozen=True)
class Rendezvous:
    """Where the ranks of a point spread over several agents meet (a multi-node point).

    ``endpoint``: ``HOST:PORT`` of the node-rank-0 agent, which hosts the rendezvous store on that
    address only; ``nodes``: ``(MIN, MAX)`` agents (equal unless elastic); ``run_id``: the same on
    every node of the point; ``is_host``: this agent is node rank 0; ``local_addr``: this agent's
    own rendezvous address; ``max_restarts``: torchrun's restarts of the workers (elastic: each
    membership change is one). ``node_rank``: a fixed node rank (non-elastic points): torchrun's
    static rendezvous on ``endpoint``, so global rank 0 (the rank that reports) is on node rank 0's
    agent; c10d, which an elastic point needs, ranks the nodes in its own order."""

    endpoint: str
    nodes: tuple[int, int]
    run_id: str
    is_host: bool
    local_addr: str = LOOPBACK
    max_restarts: int = 0
    node_rank: int | None = None

    def args(self) -> list[str]:
        lo, hi = self.nodes
        if self.node_rank is not None and lo == hi:
            host, port = self.endpoint.rsplit(":", 1)
            return [
                "--nnodes",
                str(lo),
                "--node-rank",
                str(self.node_rank),
                "--master-addr",
                host,
                "--master-port",
                port,
                "--local-addr",
                self.local_addr,
                "--max-restarts",
                str(self.max_restarts),
            ]
        conf = f"is_host={str(self.is_host).lower()},last_call_timeout={ELASTIC_LAST_CALL_S}"
        return [
            "--nnodes",
            str(lo) if lo == hi else f"{lo}:{hi}",
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            self.endpoint,
            "--rdzv-id",
            self.run_id,
            "--rdzv-conf",
            conf,
            "--local-addr",
            self.local_addr,
            "--max-restarts",
            str(self.max_restarts),
        ]

    @property
    def elastic(self) -> bool:
        return self.nodes[0] != self.nodes[1]


def torchrun_command(
    command: str,
    processes: int,
    gpus: list[int] | None = None,
    *,
    port: int | None = None,
    container: bool = False,
    rendezvous: Rendezvous | None = None,
) -> str:
    """The shell command the agent runs in place of ``command`` for ``--launcher torchrun``: one
    node on loopback, or this agent's node of a multi-node point (``rendezvous``).

    An elastic point (``nNodesPerPoint MIN:MAX``) needs torch in the agent's own environment: only
    this module's torchrun puts node rank 0's agent first in c10d's ranking (so global rank 0, the
    rank that checkpoints and reports, is on the agent that reports the point); its ranks get
    ``PHPO_ELASTIC_SINCE`` (when they were first started)."""
    elastic = rendezvous is not None and rendezvous.elastic
    if elastic and container:
        raise ValueError(
            "an elastic point (nNodesPerPoint MIN:MAX) cannot run in an evaluation container: "
            "the container's torchrun would rank the agents in its own order"
        )
    if elastic and importlib.util.find_spec("torch") is None:
        raise FileNotFoundError(
            "an elastic point (nNodesPerPoint MIN:MAX) needs torch in the agent's own "
            "environment (pip install torch)"
        )
    if not container and importlib.util.find_spec("torch") is not None:
        launcher = [sys.executable, "-m", "phpo.evaluation_container.launchers", "torchrun"]
    else:
        exe = "torchrun" if container else shutil.which("torchrun")
        if exe is None:
            raise FileNotFoundError(
                "--launcher torchrun: torchrun is not installed where this agent runs (pip install torch)"
            )
        if not container:
            log.warning(
                "torch is not in the agent's own environment: %s runs as it is, and its rendezvous "
                "stores listen on every interface of this machine",
                exe,
            )
        launcher = [exe]
    rank_cmd = rank_prefix(gpus) + command
    if elastic:
        rank_cmd = f"export {ENV_ELASTIC_SINCE}={time.time():.3f}; " + rank_cmd
    if rendezvous is None:
        rendezvous = Rendezvous(f"{LOOPBACK}:{port or free_loopback_port()}", (1, 1), "none", True)
    argv = [
        *launcher,
        *rendezvous.args(),
        "--nproc-per-node",
        str(processes),
        "--no-python",
        "bash",
        "-c",
        rank_cmd,
    ]
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
    for name in (
        "torch.distributed.elastic.rendezvous.c10d_rendezvous_backend",
        "torch.distributed.elastic.rendezvous.static_tcp_rendezvous",
        "torch.distributed.elastic.utils.distributed",
        "torch.distributed.rendezvous",
    ):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if getattr(module, "TCPStore", None) is original:
            module.TCPStore = store


def _loopback_horovod() -> None:
    """Make horovodrun's rendezvous, key-value and service servers listen on 127.0.0.1 only
    (``find_port`` binds ``('', port)``: every interface)."""
    import horovod.runner.common.util.network as common_network
    import horovod.runner.http.http_server as http_server
    import horovod.runner.util.network as network

    original = network.find_port

    def find_port(server_factory: Any) -> Any:
        return original(lambda addr: server_factory((LOOPBACK, addr[1])))

    for module in (network, http_server, common_network):
        if getattr(module, "find_port", None) is not original:
            raise SystemExit(
                f"phpo: this horovod's {module.__name__}.find_port is not the one phpo knows: "
                "its servers would listen on every interface"
            )
        module.find_port = find_port


def _leader_first_class() -> type:
    """c10d's node descriptor with node rank 0's agent (the rendezvous host) ordered first.

    torch ranks the nodes of each rendezvous round by their descriptors, ``(addr, pid,
    local_id)``: on loopback by process id, across hosts by address, so global rank 0 could land
    on any member. This subclass sorts by ``(not leader, addr, pid, local_id)``; every node of an
    elastic point runs this module, so the descriptors in the shared rendezvous state (pickled by
    reference to this module) all compare the same way."""
    cls = globals().get("_LeaderFirstNodeDesc")
    if cls is not None:
        return cls
    from torch.distributed.elastic.rendezvous import dynamic_rendezvous as dr

    base = getattr(dr, "_NodeDesc", None)
    names = [f.name for f in fields(base)] if base is not None and is_dataclass(base) else []
    if names != ["addr", "pid", "local_id"] or not hasattr(dr, "_NodeDescGenerator"):
        raise SystemExit(
            "phpo: this torch's c10d rendezvous is not the one phpo knows (no _NodeDesc(addr, pid, "
            "local_id)): an elastic point cannot keep global rank 0 on node rank 0's agent"
        )

    def key(n: Any) -> tuple[bool, str, int, int]:
        return (not getattr(n, "leader", False), n.addr, n.pid, n.local_id)

    @dataclass(eq=True, frozen=True)
    class _LeaderFirstNodeDesc(base):  # type: ignore[misc,valid-type]
        leader: bool = False

        def __lt__(self, other: Any) -> bool:
            return key(self) < key(other)

        def __le__(self, other: Any) -> bool:
            return key(self) <= key(other)

        def __gt__(self, other: Any) -> bool:
            return key(self) > key(other)

        def __ge__(self, other: Any) -> bool:
            return key(self) >= key(other)

        def __repr__(self) -> str:
            return f"{self.addr}_{self.pid}_{self.local_id}{'_leader' if self.leader else ''}"

    _LeaderFirstNodeDesc.__module__ = __name__
    _LeaderFirstNodeDesc.__qualname__ = "_LeaderFirstNodeDesc"
    globals()["_LeaderFirstNodeDesc"] = _LeaderFirstNodeDesc
    return _LeaderFirstNodeDesc


def __getattr__(name: str) -> Any:  # unpickling a peer's rendezvous state finds the class here
    if name == "_LeaderFirstNodeDesc":
        return _leader_first_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _leader_first(leader: bool) -> None:
    """This torchrun's node descriptors are leader-first ones (``leader``: it hosts the rendezvous)."""
    from torch.distributed.elastic.rendezvous import dynamic_rendezvous as dr

    cls = _leader_first_class()

    def generate(self: Any, local_addr: str | None = None) -> Any:
        with self._lock:
            local_id = self._local_id
            self._local_id += 1
        return cls(local_addr or socket.getfqdn(), os.getpid(), local_id, leader)

    dr._NodeDescGenerator.generate = generate


_ROUND_STORE_KEY = "phpo/workers_store"  # "ADDR PORT", under the round's key prefix


def _fresh_store_every_round() -> None:
    """Each rendezvous round's workers get a store of their own, hosted by node rank 0's agent.

    torch's c10d rendezvous hands its workers one TCP store for the whole run (the rendezvous'
    own, shared), writes its address only in the first round its rank 0 takes part in, and puts
    no per-round prefix on the workers' keys. When a node joins a running point, the next round
    goes wrong twice: the joiner waits 60 s for an address nobody writes under the new round's
    prefix, and the restarted workers read the previous round's process-group keys (gloo then
    connects to a port of a rank that is gone). Here rank 0 starts an empty store (on its own
    address only, like every store of this module) once each round is formed and publishes its
    address under the round's prefix (its own key: torch's address keys may be read before this
    is written); the other nodes wait for it there."""
    import torch.distributed as dist
    from torch.distributed.elastic.rendezvous import dynamic_rendezvous as dr
    from torch.distributed.elastic.rendezvous.api import RendezvousStoreInfo

    original = dr.DynamicRendezvousHandler.next_rendezvous
    if getattr(original, "phpo_fresh_store", False):
        return

    def next_rendezvous(self: Any) -> Any:
        info = original(self)
        if getattr(info, "bootstrap_store_info", None) is None:
            return info
        if info.rank == 0:
            addr = info.bootstrap_store_info.master_addr
            store = dist.TCPStore(
                host_name=addr, port=0, is_master=True, multi_tenant=True, wait_for_workers=False
            )
            # the previous round's store goes once this round's workers have their own
            self._phpo_worker_stores = [*getattr(self, "_phpo_worker_stores", [])[-1:], store]
            info.store.set(_ROUND_STORE_KEY, f"{addr} {store.port}".encode())
            # a node new in this round waits inside torch for these (torch writes them only in
            # rank 0's first round)
            info.store.set(RendezvousStoreInfo.MASTER_ADDR_KEY, addr.encode())
            info.store.set(RendezvousStoreInfo.MASTER_PORT_KEY, str(store.port).encode())
        addr, port = info.store.get(_ROUND_STORE_KEY).decode().rsplit(" ", 1)  # waits for rank 0
        where = RendezvousStoreInfo(master_addr=addr, master_port=int(port))
        info._bootstrap_store_info = where
        return info

    next_rendezvous.phpo_fresh_store = True  # type: ignore[attr-defined]
    dr.DynamicRendezvousHandler.next_rendezvous = next_rendezvous


def _rdzv_option(argv: list[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def run_with_dask_cluster(argv: list[str]) -> int:
    """Start a loopback LocalCluster, run the payload with ``DASK_SCHEDULER_ADDRESS``, close it."""
    parser = argparse.ArgumentParser(prog="python -m phpo.evaluation_container.launchers dask")
    parser.add_argument("--workers", type=int, required=True, help="worker processes (one thread each)")
    parser.add_argument("command", help="the payload, run with bash -c")
    args = parser.parse_args(argv)
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=args.workers,
        threads_per_worker=1,
        processes=True,
        host=LOOPBACK,
        dashboard_address=None,
        protocol="tcp",
    ) as cluster:
        env = dict(os.environ, DASK_SCHEDULER_ADDRESS=cluster.scheduler_address)
        print(
            f"phpo: Dask cluster of {args.workers} workers at {cluster.scheduler_address}",
            file=sys.stderr,
            flush=True,
        )
        return subprocess.call(["bash", "-c", args.command], env=env)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "dask":
        raise SystemExit(run_with_dask_cluster(argv[1:]))
    if argv and argv[0] == "horovodrun":
        _loopback_horovod()
        from horovod.runner.launch import run_commandline

        sys.argv = ["horovodrun", *argv[1:]]
        raise SystemExit(run_commandline())
    if not argv or argv[0] != "torchrun":
        raise SystemExit(
            "usage: python -m phpo.evaluation_container.launchers torchrun [torchrun arguments]\n"
            "       python -m phpo.evaluation_container.launchers horovodrun [horovodrun arguments]\n"
            "       python -m phpo.evaluation_container.launchers dask --workers N COMMAND"
        )
    _loopback_stores()
    if _rdzv_option(argv, "--rdzv-backend") == "c10d":
        conf = dict(
            kv.split("=", 1) for kv in (_rdzv_option(argv, "--rdzv-conf") or "").split(",") if "=" in kv
        )
        # through the imported module, not __main__: the peers unpickle the class by that name
        from phpo.evaluation_container import launchers

        launchers._leader_first(conf.get("is_host", "").lower() in ("1", "true", "yes"))
        launchers._fresh_store_every_round()
    from torch.distributed.run import main as torchrun_main

    torchrun_main(argv[1:])


if __name__ == "__main__":
    main()
