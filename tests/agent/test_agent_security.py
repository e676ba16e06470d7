"""Hostile input to a real ``phpo agent``: crafted sandboxes and checkpoints (CVE-2025-4517), a
payload hunting for the agent's token, an artifact whose file the server lost. Real server, real
agent processes, real payloads; the accounts are this machine's (root and ``nobody``)."""

from __future__ import annotations

import io
import os
import pwd
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from .agent_helpers import (
    REPO,
    base_spec,
    escaping_tarball,
    get_points,
    sandbox_upload,
    submit,
    wait_task,
    wait_until,
)

ONE_POINT = {"params": {"x": {"type": "int", "low": 1, "high": 1}}}
WRITE_OUTPUT = 'echo \'{"status": 0, "loss": 1.0}\' > "$PHPO_OUTPUT_FILE"'


def _upload_sandbox_bytes(server, data: bytes) -> int:
    with server.client() as c:
        r = c.put("/sandboxes", content=data, params={"name": "sandbox.tar.gz"})
        assert r.status_code == 201, r.text
        return r.json()["id"]


def _job_rundir(workdir: Path, job_id: int) -> Path:
    return workdir / "jobs" / f"job-{job_id}" / "run"


def test_a_crafted_checkpoint_and_a_lost_sandbox_on_a_real_agent(live_server, start_agent, tmp_path):
    """A rogue agent token leases a point, uploads a tarball made to escape through
    ``extractall(filter="data")`` (CVE-2025-4517) as its checkpoint and hands the point back; the
    real agent that resumes the point refuses the checkpoint, naming the member, and fails the
    point. The same agent gets a task whose sandbox file the server lost: reported as missing."""
    tid = submit(
        live_server,
        base_spec(WRITE_OUTPUT, searchSpace=ONE_POINT, maxPoints=1, maxAttempts=2, checkPointToSave="ckpt"),
    )
    with live_server.client(live_server.agent_token) as rogue:
        job = wait_until(
            lambda: (
                (r := rogue.post("/jobs/acquire", json={"agent": "rogue", "site": "local"})).status_code
                == 200
                and r.json()
            ),
            30,
            "the rogue's lease",
        )
        pid = job["points"][0]["point_id"]
        wd = tmp_path / "agent0"  # where start_agent puts the real agent; its job comes next
        evil = escaping_tarball(
            tmp_path / "evil.tgz", _job_rundir(wd, job["id"] + 1), 4, "escaped.txt", b"owned"
        )
        r = rogue.put(
            f"/jobs/{job['id']}/artifacts/checkpoint",
            content=evil.read_bytes(),
            params={"point_id": pid, "name": "checkpoint.tar.gz"},
        )
        assert r.status_code == 201, r.text
        assert (
            rogue.post(f"/jobs/{job['id']}/fail", json={"error": "rogue", "retry": True}).status_code == 200
        )

    def outside() -> set[str]:  # all but the agent's own files and the server's data directory
        names = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")}
        return {x for x in names if not x.startswith(("agent0", "server"))}

    before = outside()
    agent = start_agent(live_server)
    t = wait_task(live_server, tid, agents=(agent,))
    assert not list(tmp_path.rglob("escaped.txt"))
    assert t["state"] == "failed", t
    (p,) = get_points(live_server, tid)
    assert p["state"] == "failed" and p["attempts"] == 2
    assert f"the checkpoint of point {pid} (artifact" in p["error"] and "was not restored" in p["error"]
    assert "member 'a' is a symbolic link" in p["error"], p["error"]
    # a lost file is named as such, not taken for a network failure
    lost = sandbox_upload(live_server, {"run.sh": "true"})
    (f,) = (live_server.data_dir / "artifacts").rglob("*sandbox.tar.gz")
    f.unlink()
    tid_lost = submit(
        live_server, base_spec(WRITE_OUTPUT, searchSpace=ONE_POINT, maxPoints=1, sandbox=str(lost))
    )
    wait_task(live_server, tid_lost, agents=(agent,))
    (p,) = get_points(live_server, tid_lost)
    assert p["state"] == "failed" and p["attempts"] == 1
    assert f"the sandbox (artifact {lost}) is missing on the server" in p["error"]
    assert "is missing from the artifact store" in p["error"] and "cannot reach" not in p["error"]
    # nothing outside the job directories (removed with their jobs) was made or changed
    wait_until(lambda: not any((wd / "jobs").iterdir()), 10, "the job directories to be removed")
    assert not list(tmp_path.rglob("escaped.txt"))
    assert outside() == before


def test_crafted_sandboxes_fail_their_job_naming_the_member(live_server, start_agent, tmp_path):
    wd = tmp_path / "agent0"
    evil = escaping_tarball(tmp_path / "evil.tgz", _job_rundir(wd, 1), 4, "escaped.txt", b"owned")
    sb = _upload_sandbox_bytes(live_server, evil.read_bytes())
    tid = submit(live_server, base_spec(WRITE_OUTPUT, searchSpace=ONE_POINT, maxPoints=1, sandbox=str(sb)))
    buf = io.BytesIO()  # a plain ../ member
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"owned"))
    sb2 = _upload_sandbox_bytes(live_server, buf.getvalue())
    tid2 = submit(live_server, base_spec(WRITE_OUTPUT, searchSpace=ONE_POINT, maxPoints=1, sandbox=str(sb2)))
    # and a sandbox with subdirectories (regular folders and files) still works
    ok = sandbox_upload(live_server, {"pkg/sub/value.txt": "2.5", "pkg/run.sh": "cat pkg/sub/value.txt"})
    tid3 = submit(
        live_server,
        base_spec(
            'echo "{\\"status\\": 0, \\"loss\\": $(bash pkg/run.sh)}" > output.json',
            searchSpace=ONE_POINT,
            maxPoints=1,
            sandbox=str(ok),
        ),
    )
    agent = start_agent(live_server, "--slots", "2")
    for t in (tid, tid2):
        wait_task(live_server, t, agents=(agent,))
    assert not list(tmp_path.rglob("escaped.txt"))
    (p,) = get_points(live_server, tid)
    assert p["attempts"] == 1  # refused for good: another agent would refuse it too
    assert f"the sandbox (artifact {sb}) was not unpacked" in p["error"]
    assert "member 'a' is a symbolic link" in p["error"], p["error"]
    (p,) = get_points(live_server, tid2)
    assert "unsafe member name '../../escaped.txt'" in p["error"], p["error"]
    assert wait_task(live_server, tid3, agents=(agent,))["state"] == "finished"
    assert get_points(live_server, tid3)[0]["loss"] == 2.5


def test_an_agent_on_a_site_its_token_is_not_for_stops_saying_why(live_server, start_agent):
    with live_server.client(live_server.admin_token) as admin:
        r = admin.post("/tokens", json={"name": "site-a-agent", "role": "agent", "sites": ["SITE_A"]})
        assert r.status_code == 201, r.text
    agent = start_agent(live_server, site="SITE_B", token=r.json()["token"])
    assert agent.wait(60) == 3
    assert "is for site(s) SITE_A; it cannot take jobs for site 'SITE_B'" in agent.log()


# ------------------------------------------------------------------------- the agent's token

NOBODY = "nobody"


def _need_root_and_nobody() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: the agent runs payloads as another account only when it is root")
    try:
        pwd.getpwnam(NOBODY)
    except KeyError:
        pytest.skip("no 'nobody' account on this machine")


@pytest.fixture
def shared_dir():
    """A directory outside pytest's (0700) temp tree, which the ``nobody`` payload can reach."""
    d = Path(tempfile.mkdtemp(prefix="phpo-sec-", dir="/tmp"))
    d.chmod(0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_a_payload_cannot_read_the_agents_token(live_server, start_agent, shared_dir):
    """The payload, run by a real root agent with ``--payload-user nobody``, looks everywhere the
    token could be: the agent's command line and environment in /proc, every process's command
    line, its own environment, the token file. It finds it nowhere."""
    _need_root_and_nobody()
    token = live_server.agent_token
    token_file = shared_dir / "agent.token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    probe = shared_dir / "probe"
    probe.mkdir()
    probe.chmod(0o777)
    grab = {
        "agent_cmdline": "/proc/$PPID/cmdline",
        "agent_environ": "/proc/$PPID/environ",
        "agent_mem_maps": "/proc/$PPID/maps",
        "token_file": str(token_file),
    }
    script = "; ".join(
        [f"cat {src} > {probe}/{name} 2> {probe}/{name}.err" for name, src in grab.items()]
        + [
            f"env > {probe}/own_env",
            f"id -u > {probe}/uid",
            f"cat /proc/[0-9]*/cmdline > {probe}/all_cmdlines 2>/dev/null",
            f"cat /proc/[0-9]*/environ > {probe}/all_environs 2>/dev/null",
            WRITE_OUTPUT,
        ]
    )
    tid = submit(live_server, base_spec(script, searchSpace=ONE_POINT, maxPoints=1))
    wd = shared_dir / "agent"
    wd.mkdir()
    # the token also in the agent's environment: removed from it, and its initial copy in
    # /proc/PID/environ unreadable to the payload
    agent = start_agent(
        live_server, "--payload-user", NOBODY, token_file=token_file, workdir=wd, env={"PHPO_TOKEN": token}
    )
    t = wait_task(live_server, tid, agents=(agent,))
    assert t["state"] == "finished", (t, agent.log()[-3000:])
    seen = {p.name: p.read_bytes() for p in probe.iterdir()}
    assert seen["uid"].strip() == str(pwd.getpwnam(NOBODY).pw_uid).encode()
    assert b"--token-file" in seen["agent_cmdline"]  # it did read the agent's command line
    assert b"PHPO_JOB_ID=" in seen["own_env"] and b"PHPO_TOKEN" not in seen["own_env"]
    for name in ("agent_environ", "agent_mem_maps", "token_file"):
        assert seen[name] == b"" and b"Permission denied" in seen[f"{name}.err"], (name, seen[f"{name}.err"])
    leaked = [name for name, data in seen.items() if token.encode() in data]
    assert leaked == [], f"the token was readable in {leaked}"


def test_the_agent_hides_its_proc_files_from_payloads_of_its_own_uid(shared_dir):
    """Without --payload-user, a payload runs as the agent's own account. For a non-root agent,
    ``protect_process`` (PR_SET_DUMPABLE=0) is what keeps /proc/AGENT/environ, where a
    PHPO_TOKEN given at start stays even after the agent removed it from os.environ, from
    payloads of that uid. Run as ``nobody`` with the system Python (the test venv's Python is
    not readable by other accounts here), on the agent's own function."""
    _need_root_and_nobody()
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 for the 'nobody' account")
    shim = shared_dir / "py" / "phpo"
    shim.mkdir(parents=True)
    (shim / "evaluation_container").symlink_to(REPO / "evaluation_container")  # stdlib-only modules
    (shared_dir / "py").chmod(0o755)
    shim.chmod(0o755)
    code = (
        "import os, subprocess, sys\n"
        "if sys.argv[1] == 'protect':\n"
        "    from phpo.evaluation_container.runners.subprocess import protect_process\n"
        "    assert protect_process()\n"
        "os.environ.pop('PHPO_TOKEN')\n"
        "r = subprocess.run(['cat', f'/proc/{os.getpid()}/environ'], capture_output=True, env={})\n"
        "print(r.returncode, b'secret-marker' in r.stdout, r.stderr.decode().strip())\n"
    )
    out = {}
    for mode in ("plain", "protect"):
        p = subprocess.run(
            [
                "setpriv",
                f"--reuid={NOBODY}",
                f"--regid={pwd.getpwnam(NOBODY).pw_gid}",
                "--clear-groups",
                python,
                "-c",
                code,
                mode,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={
                "PHPO_TOKEN": "secret-marker",
                "PYTHONPATH": str(shared_dir / "py"),
                "PYTHONDONTWRITEBYTECODE": "1",
                "PATH": "/usr/bin:/bin",
            },
            check=False,
        )
        assert p.returncode == 0, p.stderr
        out[mode] = p.stdout.split(maxsplit=2)
    assert out["plain"][:2] == ["0", "True"]  # removed from os.environ, still in /proc/PID/environ
    assert out["protect"][:2] == ["1", "False"] and "Permission denied" in out["protect"][2]


def test_phpo_up_starts_its_agent_without_the_token_on_the_command_line(tmp_path):
    """The embedded stack's agent, started as `phpo up` starts it (no server needed to look at its
    command line: it keeps retrying meanwhile)."""
    from phpo.client.cli.stack import Stack

    stack = Stack(tmp_path / "data", slots=1)
    stack.data_dir.mkdir(parents=True)
    stack.log_dir.mkdir()
    stack.agent_dir.mkdir()
    stack.agent_token = "phpo_secret-agent-token-for-this-test"
    try:
        stack.start_agent()
        args = Path(f"/proc/{stack.agent.pid}/cmdline").read_bytes().split(b"\0")
        assert b"secret-agent-token" not in b" ".join(args)
        token_file = Path(args[args.index(b"--token-file") + 1].decode())
        assert token_file.read_text() == stack.agent_token and token_file.stat().st_mode & 0o777 == 0o600
        env = Path(f"/proc/{stack.agent.pid}/environ")
        assert b"secret-agent-token" not in env.read_bytes()  # root reads it; nor is it there
    finally:
        stack.stop(grace=5)
