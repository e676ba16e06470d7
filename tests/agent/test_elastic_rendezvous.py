"""The c10d rendezvous of an elastic point (``nNodesPerPoint MIN:MAX``) puts node rank 0's agent
first: two real torchruns (this package's wrapper) meet on loopback, the host on 127.0.0.2, the
other node on 127.0.0.1. torch alone ranks the nodes by address (then process id), which would
give global rank 0 to the other node; the point's result and checkpoints come from global rank 0,
so it must run on the host, the agent that reports the point."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("torch", reason="torch is not installed")

from phpo.evaluation_container.launchers import Rendezvous, free_loopback_port, torchrun_command  # noqa: E402


def _run_node(rdzv: Rendezvous, workdir, env) -> subprocess.Popen:
    workdir.mkdir()
    cmd = torchrun_command('echo "$RANK $GROUP_RANK $WORLD_SIZE" > rank.txt', 1, rendezvous=rdzv)
    return subprocess.Popen(
        ["bash", "-c", cmd], cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.parametrize("leader_addr", ["127.0.0.2", "127.0.0.1"])
def test_the_host_node_gets_global_rank_0_whatever_its_address(tmp_path, leader_addr):
    other_addr = "127.0.0.1" if leader_addr == "127.0.0.2" else "127.0.0.2"
    endpoint = f"{leader_addr}:{free_loopback_port(leader_addr)}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    # the member starts first (lower pid too): neither its address nor its pid may win rank 0
    member = _run_node(
        Rendezvous(endpoint, (2, 2), "t", False, local_addr=other_addr), tmp_path / "member", env
    )
    leader = _run_node(
        Rendezvous(endpoint, (2, 2), "t", True, local_addr=leader_addr), tmp_path / "leader", env
    )
    out = {}
    for name, proc in (("leader", leader), ("member", member)):
        try:
            out[name] = proc.communicate(timeout=180)[0]
        finally:
            proc.kill()
    assert leader.returncode == 0 and member.returncode == 0, out
    assert (tmp_path / "leader" / "rank.txt").read_text().split() == ["0", "0", "2"], out
    assert (tmp_path / "member" / "rank.txt").read_text().split() == ["1", "1", "2"], out
