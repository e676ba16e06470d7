"""The Docker executor for real, against podman's Docker-compatible service (README, Containers):
there is no Docker engine on these machines, podman serves the same API. Skipped with a
visible reason where podman cannot run."""

from __future__ import annotations

import time

import psutil
from phpo.evaluation_container.runners.base import RunSpec
from phpo.evaluation_container.runners.docker import DockerExecutor

from .agent_helpers import base_spec, get_points, sandbox_upload, submit, wait_task


def _spec(tmp_path, command: str, image: str, **kw) -> RunSpec:
    wd = tmp_path / "wd"
    wd.mkdir(exist_ok=True)
    return RunSpec(
        command=command,
        workdir=wd,
        stdout_path=tmp_path / "out.txt",
        stderr_path=tmp_path / "err.txt",
        image=image,
        **kw,
    )


def test_container_runs_in_the_mounted_workdir(podman_service, tmp_path):
    ex = DockerExecutor(podman_service.base_url, name="podman")
    try:
        spec = _spec(
            tmp_path,
            "cat input.json; echo; echo done > output.txt; echo to-stderr >&2; "
            "touch /oops 2>/dev/null || echo root-is-read-only; "
            "cat /proc/net/dev | grep -c : ; echo pid=$PHPO_POINT_ID; exit 4",
            podman_service.image,
            env={"PHPO_POINT_ID": "9"},
        )
        (spec.workdir / "input.json").write_text('{"x": 1}')
        h = ex.start(spec)
        assert h.wait(60) == 4
        h.finish()
        out = (tmp_path / "out.txt").read_text().split()
        assert out[0] == '{"x":' and "root-is-read-only" in out and "pid=9" in out
        assert out[out.index("root-is-read-only") + 1] == "1"  # network none: only the loopback
        assert (tmp_path / "err.txt").read_text().strip() == "to-stderr"
        assert (spec.workdir / "output.txt").read_text().strip() == "done"  # written through the mount
        assert not ex.client.containers.list(all=True, filters={"label": "phpo=evaluation"})  # removed
    finally:
        ex.close()


def test_container_is_stopped_on_kill(podman_service, tmp_path):
    ex = DockerExecutor(podman_service.base_url, name="podman")
    try:
        h = ex.start(_spec(tmp_path, "sleep 300", podman_service.image))
        assert h.wait(1.5) is None
        t0 = time.monotonic()
        h.kill(grace=1)
        assert h.poll() is not None and time.monotonic() - t0 < 30
        h.finish()
        assert not ex.client.containers.list(all=True, filters={"label": "phpo=evaluation"})
    finally:
        ex.close()


RUN_SH = """\
x=$(sed 's/[^0-9]//g' input.json)
echo "running as $(id -u) in $(pwd)" >&2
echo "{\\"status\\": 0, \\"loss\\": $x, \\"metrics\\": {\\"workdir\\": \\"$PHPO_WORKDIR\\"}}" > output.json
"""


def test_agent_runs_container_tasks_with_its_own_podman(podman_service, live_server, start_agent):
    """``--executor podman`` without a socket: the agent starts a podman service of its own under
    --workdir, runs the task's container, and stops the service when it exits."""
    sb = sandbox_upload(live_server, {"run.sh": RUN_SH})
    tid = submit(
        live_server,
        base_spec("sh run.sh", evaluationContainer=podman_service.image, maxPoints=3, sandbox=str(sb)),
    )
    agent = start_agent(
        live_server, "--executor", "podman", env={"CONTAINERS_CONF": str(podman_service.conf)}
    )
    t = wait_task(live_server, tid, timeout=120, agents=(agent,))
    assert t["state"] == "finished", t
    pts = get_points(live_server, tid)
    assert [p["loss"] for p in pts] == [float(p["params"]["x"]) for p in pts]
    assert {p["metrics"]["workdir"] for p in pts} == {"/srv/workDir"}
    assert "container jobs run with podman" in agent.log()
    sock = str(agent.workdir / "podman" / "podman.sock")
    agent.stop()
    assert agent.proc.returncode == 0
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if sock in " ".join(p.info["cmdline"] or [])]
    assert not leftovers, "the agent's podman service outlived it"
