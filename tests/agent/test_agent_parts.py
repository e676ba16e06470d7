"""The agent's parts on their own: GPU slots, output reading, checkpoints, the SDK, executors'
process handling and container specs. No server needed (the API client and the outbox are
tested against a real server in test_agent_api.py)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from phpo.evaluation_container import sdk
from phpo.evaluation_container.agent import TIMEOUT_STATUS, Outcome, read_output, tail_text
from phpo.evaluation_container.checkpoints import (
    CheckpointSaver,
    restore_checkpoint,
    safe_extract,
)
from phpo.evaluation_container.cli import build_parser
from phpo.evaluation_container.gpu_slots import SlotPool, plan_slots
from phpo.evaluation_container.resources import base_resources, cpu_flags, resolve_gpus
from phpo.evaluation_container.runners.base import ExecutorError, RunSpec
from phpo.evaluation_container.runners.docker import container_kwargs
from phpo.evaluation_container.runners.subprocess import SubprocessExecutor, command_env
from phpo.schemas.archives import ArchiveError
from phpo.schemas.jobs import GPUInfo

from .agent_helpers import PY, pid_alive

# ----------------------------------------------------------------------------- GPU slots
# There is no GPU on this machine: the GPUs below are explicit index lists (as --gpus 0,1,2,3
# gives them), which is exactly the input the slot logic sees on a GPU node too.


def gpus(*idx: int) -> list[GPUInfo]:
    return [GPUInfo(index=i, model="fake (no GPU on the test machine)") for i in idx]


def test_slots_split_gpus_into_disjoint_groups():
    assert [s.cuda_visible_devices for s in plan_slots(2, gpus(0, 1, 2, 3))] == ["0,1", "2,3"]
    assert [s.cuda_visible_devices for s in plan_slots(2, gpus(0, 1, 2, 3, 4))] == ["0,1,2", "3,4"]
    assert [s.cuda_visible_devices for s in plan_slots(3, gpus(4, 6, 7))] == ["4", "6", "7"]


def test_more_slots_than_gpus_never_share_unless_asked():
    no_share = plan_slots(4, gpus(0, 1))
    assert [s.cuda_visible_devices for s in no_share] == ["0", "1"]  # capped at one job per GPU
    shared = plan_slots(4, gpus(0, 1), share=True)
    assert [s.cuda_visible_devices for s in shared] == ["0", "1", "0", "1"]
    # --share-gpus changes nothing when there are enough GPUs
    assert [s.cuda_visible_devices for s in plan_slots(2, gpus(0, 1), share=True)] == ["0", "1"]


def test_no_gpu_management_and_no_gpus():
    assert [s.gpu_indices for s in plan_slots(3, None)] == [None, None, None]  # env left alone
    assert [s.cuda_visible_devices for s in plan_slots(2, [])] == ["", ""]  # --gpus none hides them
    with pytest.raises(ValueError, match="--slots"):
        plan_slots(0, None)


def test_running_jobs_never_hold_the_same_gpu():
    pool = SlotPool(plan_slots(3, gpus(0, 1, 2, 3, 4, 5, 6)))
    taken = [pool.take() for _ in range(3)]
    assert pool.take() is None
    held = [g for s in taken for g in s.gpu_indices]
    assert sorted(held) == list(range(7)) and len(set(held)) == len(held)
    pool.release(taken[1])
    again = pool.take()
    assert again is not None and again.gpu_indices == taken[1].gpu_indices
    with pytest.raises(ValueError, match="released twice"):
        pool.release(taken[0]) or pool.release(taken[0])


def test_resolve_gpus_explicit_list_and_errors():
    assert [g.index for g in resolve_gpus("0,2")] == [0, 2]
    assert resolve_gpus("none") == []
    for bad in ("a,b", "0,0", "-1"):
        with pytest.raises(ValueError, match="--gpus"):
            resolve_gpus(bad)


def test_resolve_gpus_auto_without_nvml_manages_nothing():
    try:
        import pynvml  # noqa: F401
    except ImportError:
        assert resolve_gpus("auto") is None
    else:  # pragma: no cover - a machine with nvidia-ml-py installed
        pytest.skip("nvidia-ml-py is installed here; auto depends on the driver")


def test_resources_describe_this_machine(tmp_path):
    import platform

    r = base_resources(["podman"])
    assert r.arch == platform.machine() and r.cpus >= 1 and r.memory_mb > 0
    assert r.container_runtimes == ["podman"]
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: sse avx2 fpu\n\nprocessor\t: 1\nflags\t\t: other\n")
    assert cpu_flags(info) == ["avx2", "fpu", "sse"]
    info.write_text("processor\t: 0\nFeatures\t: fp asimd\n")
    assert cpu_flags(info) == ["asimd", "fp"]


# ----------------------------------------------------------------------------- output reading


def _stderr(tmp_path: Path, text: str = "Traceback: boom happened\n") -> Path:
    p = tmp_path / "stderr.txt"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("content", "rc", "status", "needle"),
    [
        (None, 3, 3, "wrote no output file 'output.json'"),
        ("{not json", 0, 1, "is not valid JSON"),
        ("[1, 2]", 0, 1, "must hold a JSON object"),
        ('{"status": 2, "message": "diverged"}', 0, 2, "reported status 2: diverged"),
        ('{"status": 0}', 0, 1, "status 0 but no loss"),
        ('{"status": 0, "loss": "abc"}', 0, 1, "does not follow the contract"),
        ('{"status": 0, "loss": NaN}', 0, 1, "does not follow the contract"),
    ],
)
def test_bad_outputs_are_failed_attempts_with_stderr(tmp_path, content, rc, status, needle):
    out = tmp_path / "output.json"
    if content is not None:
        out.write_text(content)
    r = read_output(out, Outcome.exited, rc, _stderr(tmp_path), 7, None)
    assert r.status == status != 0
    assert needle in r.message and "boom happened" in r.message
    assert r.loss is None


def test_good_outputs(tmp_path):
    out = tmp_path / "output.json"
    out.write_text('{"status": 0, "loss": 0.0, "metrics": {"acc": 1}}')
    r = read_output(out, Outcome.exited, 0, _stderr(tmp_path), 7, None)
    assert (r.status, r.loss, r.metrics) == (0, 0.0, {"acc": 1})  # 0.0 is a real loss
    out.write_text('{"status": 0, "loss": [1, 2.5]}')
    assert read_output(out, Outcome.exited, 0, _stderr(tmp_path), 7, None).loss == [1.0, 2.5]
    # written, then crashed on teardown: the written result stands
    out.write_text('{"loss": 3}')
    assert read_output(out, Outcome.exited, 139, _stderr(tmp_path), 7, None).loss == 3.0


def test_timeout_result(tmp_path):
    r = read_output(tmp_path / "output.json", Outcome.timeout, -15, _stderr(tmp_path), 7, 2.5)
    assert r.status == TIMEOUT_STATUS and "timed out after 2.5 s" in r.message and "boom" in r.message


def test_stderr_tail_keeps_the_end(tmp_path):
    p = tmp_path / "e.txt"
    p.write_text("".join(f"line {i}\n" for i in range(5000)))
    t = tail_text(p, 200)
    assert t.startswith("...") and t.endswith("line 4999") and "line 10\n" not in t


# ----------------------------------------------------------------------------- checkpoints


def _saver(tmp_path: Path, paths: list[str], uploads: list, max_bytes: int = 10**9) -> CheckpointSaver:
    def upload(p: Path) -> None:
        with tarfile.open(p) as tar:
            uploads.append(sorted(m.name for m in tar.getmembers() if m.isfile()))

    return CheckpointSaver(
        tmp_path / "run", paths, max_bytes=max_bytes, scratch_dir=tmp_path / "scratch", upload=upload
    )


def test_checkpoint_uploaded_only_when_changed(tmp_path):
    run = tmp_path / "run"
    (run / "ckpt").mkdir(parents=True)
    uploads: list = []
    saver = _saver(tmp_path, ["ckpt", "model.pt"], uploads)
    assert saver.save_if_changed() is False  # nothing written yet (empty dir)
    (run / "ckpt" / "state.json").write_text('{"epoch": 1}')
    assert saver.save_if_changed() is True
    assert saver.save_if_changed() is False  # unchanged
    (run / "model.pt").write_bytes(b"w" * 100)
    assert saver.save_if_changed() is True
    (run / "ckpt" / "state.json").write_text('{"epoch": 22}')  # size differs too
    assert saver.save_if_changed() is True
    assert uploads == [["ckpt/state.json"], ["ckpt/state.json", "model.pt"], ["ckpt/state.json", "model.pt"]]
    assert not list((tmp_path / "scratch").glob("*.tar.gz"))  # scratch tarballs removed


def test_checkpoint_size_limit_is_the_configured_one(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "big.bin").write_bytes(os.urandom(300_000))
    uploads: list = []
    assert _saver(tmp_path, ["big.bin"], uploads, max_bytes=200_000).save_if_changed() is False
    assert _saver(tmp_path, ["big.bin"], uploads, max_bytes=400_000).save_if_changed() is True
    assert uploads == [["big.bin"]]


def test_checkpoint_paths_must_stay_inside(tmp_path):
    for bad in ("/etc/passwd", "../x"):
        with pytest.raises(ValueError, match="inside the working directory"):
            _saver(tmp_path, [bad], [])


def test_restore_places_or_unpacks(tmp_path):
    src = tmp_path / "src"
    (src / "ckpt").mkdir(parents=True)
    (src / "ckpt" / "state.json").write_text('{"epoch": 4}')
    tb = tmp_path / "c.tar.gz"
    with tarfile.open(tb, "w:gz") as tar:
        tar.add(src / "ckpt", arcname="ckpt")
    w1 = tmp_path / "w1"
    w1.mkdir()
    restore_checkpoint(tb, w1, None)
    assert json.loads((w1 / "ckpt" / "state.json").read_text()) == {"epoch": 4}
    with tarfile.open(tb, "w:gz") as tar:
        tar.add(src / "ckpt", arcname="ckpt")
    w2 = tmp_path / "w2"
    w2.mkdir()
    placed = restore_checkpoint(tb, w2, "resume/ckpt.tar.gz")
    assert placed == w2 / "resume" / "ckpt.tar.gz" and tarfile.is_tarfile(placed)
    assert not (w2 / "ckpt").exists()


def test_unpacking_refuses_paths_outside(tmp_path):
    tb = tmp_path / "evil.tar.gz"
    with tarfile.open(tb, "w:gz") as tar:
        data = b"owned"
        info = tarfile.TarInfo("../outside.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ArchiveError, match="'../outside.txt'"):
        safe_extract(tb, dest)
    assert not (tmp_path / "outside.txt").exists()


# ----------------------------------------------------------------------------- SDK


@pytest.fixture
def sdk_env(tmp_path, monkeypatch):
    wd = tmp_path / "wd"
    (wd / ".phpo").mkdir(parents=True)
    for k, v in {
        "PHPO_WORKDIR": str(wd),
        "PHPO_INPUT_FILE": "in.json",
        "PHPO_OUTPUT_FILE": "out.json",
        "PHPO_TRAINING_DATA_FILE": "ds.json",
        "PHPO_CHECKPOINT_TO_SAVE": "ckpt,model.pt",
        "PHPO_INTERMEDIATE_FILE": ".phpo/intermediate.jsonl",
        "PHPO_CONTROL_FILE": ".phpo/control.json",
        "PHPO_POINT_ID": "12",
        "PHPO_ATTEMPT": "2",
        "PHPO_RESUMED": "0",
    }.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("PHPO_CHECKPOINT_TO_LOAD", raising=False)
    return wd


def test_sdk_reads_the_agent_files(sdk_env):
    (sdk_env / "in.json").write_text('{"lr": 0.1}')
    (sdk_env / "ds.json").write_text('["a.root", "b.root"]')
    assert sdk.load_point() == {"lr": 0.1}
    assert sdk.training_files() == ["a.root", "b.root"]
    assert (sdk.point_id(), sdk.attempt()) == (12, 2)
    assert sdk.checkpoint_dir() == sdk_env / "ckpt" and (sdk_env / "ckpt").is_dir()
    assert sdk.latest_checkpoint() is None  # a fresh start


def test_sdk_latest_checkpoint_on_resume(sdk_env, monkeypatch):
    (sdk_env / "ckpt").mkdir()
    (sdk_env / "ckpt" / "s.json").write_text("{}")
    monkeypatch.setenv("PHPO_RESUMED", "1")
    assert sdk.latest_checkpoint() == sdk_env / "ckpt"
    monkeypatch.setenv("PHPO_CHECKPOINT_TO_LOAD", "resume.tar.gz")
    assert sdk.latest_checkpoint() is None
    (sdk_env / "resume.tar.gz").write_bytes(b"x")
    assert sdk.latest_checkpoint() == sdk_env / "resume.tar.gz"


def test_sdk_report_writes_the_contract_file(sdk_env):
    sdk.report(0.0, metrics={"acc": 0.9})
    assert json.loads((sdk_env / "out.json").read_text()) == {
        "status": 0,
        "loss": 0.0,
        "metrics": {"acc": 0.9},
    }
    sdk.report(None, status=3, message="diverged")
    assert json.loads((sdk_env / "out.json").read_text()) == {
        "status": 3,
        "loss": None,
        "message": "diverged",
    }
    for bad in (None, float("nan"), [], "x"):
        with pytest.raises(ValueError, match="loss"):
            sdk.report(bad)


def test_sdk_intermediate_and_stop(sdk_env):
    assert sdk.report_intermediate(1, 0.5) is True
    assert sdk.report_intermediate(2, 0.25) is True
    lines = [json.loads(x) for x in (sdk_env / ".phpo" / "intermediate.jsonl").read_text().splitlines()]
    assert [(r["point_id"], r["step"], r["value"]) for r in lines] == [(12, 1, 0.5), (12, 2, 0.25)]
    (sdk_env / ".phpo" / "control.json").write_text('{"stop_points": [11]}')
    assert sdk.report_intermediate(3, 0.2) is True  # another point is stopped, not this one
    (sdk_env / ".phpo" / "control.json").write_text('{"stop_points": [12]}')
    assert sdk.report_intermediate(4, 0.1) is False


def test_sdk_defaults_without_agent(tmp_path, monkeypatch):
    for k in list(os.environ):
        if k.startswith("PHPO_"):
            monkeypatch.delenv(k)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "input.json").write_text('{"a": 1}')
    assert sdk.load_point() == {"a": 1} and sdk.training_files() == []
    sdk.report(1.5)
    assert json.loads((tmp_path / "output.json").read_text())["loss"] == 1.5
    assert sdk.report_intermediate(1, 1.0) is True


# ----------------------------------------------------------------------------- executors


def _spec(tmp_path: Path, command: str, **kw) -> RunSpec:
    wd = tmp_path / "wd"
    wd.mkdir(exist_ok=True)
    return RunSpec(
        command=command, workdir=wd, stdout_path=tmp_path / "out.txt", stderr_path=tmp_path / "err.txt", **kw
    )


def test_subprocess_env_gpus_and_no_token(tmp_path, monkeypatch):
    monkeypatch.setenv("PHPO_TOKEN", "secret-agent-token")
    spec = _spec(tmp_path, "env", env={"PHPO_POINT_ID": "5"}, gpus=[2, 3])
    env = command_env(spec)
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and env["PHPO_POINT_ID"] == "5" and "PHPO_TOKEN" not in env
    h = SubprocessExecutor().start(spec)
    assert h.wait(30) == 0
    h.finish()
    out = (tmp_path / "out.txt").read_text()
    assert "CUDA_VISIBLE_DEVICES=2,3" in out and "secret-agent-token" not in out
    assert command_env(_spec(tmp_path, "true", gpus=[]))["CUDA_VISIBLE_DEVICES"] == ""


def test_subprocess_exit_status_and_cwd(tmp_path):
    h = SubprocessExecutor().start(_spec(tmp_path, "pwd; echo oops >&2; exit 7"))
    assert h.wait(30) == 7
    h.finish()
    assert (tmp_path / "out.txt").read_text().strip() == str(tmp_path / "wd")
    assert (tmp_path / "err.txt").read_text().strip() == "oops"


def test_kill_takes_the_whole_process_group(tmp_path):
    # the command starts a grandchild that ignores SIGTERM: it must still go (SIGKILL after grace)
    script = tmp_path / "spawn.py"
    script.write_text(
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)'])\n"
        f"open({str(tmp_path / 'gc.pid')!r}, 'w').write(str(p.pid))\n"
        "time.sleep(300)\n"
    )
    h = SubprocessExecutor().start(_spec(tmp_path, f"{PY} {script}"))
    deadline = time.monotonic() + 20
    while not (tmp_path / "gc.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    gc = int((tmp_path / "gc.pid").read_text())
    assert pid_alive(gc)
    h.kill(grace=0.5)
    h.finish()
    assert h.poll() is not None
    deadline = time.monotonic() + 10
    while pid_alive(gc) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(gc), "the grandchild survived the group kill"


@pytest.mark.parametrize("via", ["setpriv", "preexec_fn"])
def test_payload_dies_with_a_killed_agent(tmp_path, via):
    """PR_SET_PDEATHSIG: an agent killed -9 leaves no payload running, whether setpriv sets it
    (where util-linux has it) or the preexec_fn fallback does."""
    from phpo.evaluation_container.runners import subprocess as sp

    if via == "setpriv" and sp._setpriv() is None:
        pytest.skip(
            "SKIPPED LOUDLY: no setpriv with --pdeathsig on this machine; the preexec_fn path is tested"
        )
    parent = tmp_path / "parent.py"
    parent.write_text(
        "import sys, time\nfrom pathlib import Path\n"
        "from phpo.evaluation_container.runners.base import RunSpec\n"
        "from phpo.evaluation_container.runners import subprocess as sp\n"
        "from phpo.evaluation_container.runners.subprocess import SubprocessExecutor\n"
        + ("sp._setpriv = lambda: None\n" if via == "preexec_fn" else "assert sp._setpriv()\n")
        + f"wd = Path({str(tmp_path)!r})\n"
        "h = SubprocessExecutor().start(RunSpec(command='echo $$ > child.pid; exec sleep 300', workdir=wd, "
        "stdout_path=wd / 'o', stderr_path=wd / 'e'))\n"
        "time.sleep(300)\n"
    )
    p = subprocess.Popen([PY, str(parent)])
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "child.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        child = int((tmp_path / "child.pid").read_text())
        assert pid_alive(child)
        p.send_signal(signal.SIGKILL)
        p.wait()
        deadline = time.monotonic() + 10
        while pid_alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(child), "the payload outlived its agent"
    finally:
        if p.poll() is None:
            p.kill()


def test_container_spec(tmp_path):
    # built without an engine: the same dict the Docker SDK receives
    spec = _spec(
        tmp_path,
        "python train.py",
        image="reg/img:1",
        gpus=[1, 3],
        env={"PHPO_POINT_ID": "5", "CUDA_VISIBLE_DEVICES": "1,3"},
    )
    kw = container_kwargs(spec)
    assert kw["image"] == "reg/img:1"
    assert kw["entrypoint"] == ["/bin/sh", "-c"] and kw["command"] == ["python train.py"]
    assert kw["volumes"] == {str((tmp_path / "wd").resolve()): {"bind": "/srv/workDir", "mode": "rw"}}
    assert kw["working_dir"] == "/srv/workDir" and kw["read_only"] is True and kw["network_mode"] == "none"
    assert "/tmp" in kw["tmpfs"]
    env = kw["environment"]
    assert env["PHPO_POINT_ID"] == "5" and env["PHPO_GPUS"] == "1,3" and "CUDA_VISIBLE_DEVICES" not in env
    (req,) = kw["device_requests"]
    assert req["DeviceIDs"] == ["1", "3"] and req["Capabilities"] == [["gpu"]]
    no_gpu = container_kwargs(_spec(tmp_path, "x", image="i", network="host"))
    assert "device_requests" not in no_gpu and no_gpu["network_mode"] == "host"
    with pytest.raises(ExecutorError, match="needs an image"):
        container_kwargs(_spec(tmp_path, "x"))
    with pytest.raises(ExecutorError, match="network"):
        container_kwargs(_spec(tmp_path, "x", image="i", network="bridge"))


def test_cli_options_and_errors(tmp_path, monkeypatch):
    a = build_parser().parse_args(
        [
            "--site",
            "s",
            "--slots",
            "2",
            "--gpus",
            "0,1",
            "--share-gpus",
            "--executor",
            "podman",
            "--steering-only",
            "--once",
        ]
    )
    assert (a.slots, a.gpus, a.share_gpus, a.executor, a.steering_only, a.once) == (
        2,
        "0,1",
        True,
        "podman",
        True,
        True,
    )
    assert a.max_checkpoint_mb == 10240.0 and a.grace_seconds == 30.0
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHPO_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path)  # no config file
    p = subprocess.run(
        [PY, "-m", "phpo.evaluation_container", "--site", "s"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert p.returncode == 2 and "--server" in p.stderr
    p = subprocess.run(
        [
            PY,
            "-m",
            "phpo.evaluation_container",
            "--site",
            "s",
            "--server",
            "http://127.0.0.1:9",
            "--gpus",
            "x,y",
        ],
        capture_output=True,
        text=True,
        env={**env, "PHPO_TOKEN": "t"},
        timeout=60,
        check=False,
    )
    assert p.returncode == 2 and "--gpus" in p.stderr
    # a token on the command line is refused, saying where to put it instead
    p = subprocess.run(
        [
            PY,
            "-m",
            "phpo.evaluation_container",
            "--site",
            "s",
            "--server",
            "http://127.0.0.1:9",
            "--token",
            "t",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert p.returncode == 2 and "/proc/PID/cmdline" in p.stderr and "--token-file" in p.stderr
    missing = tmp_path / "no-such-token"
    p = subprocess.run(
        [
            PY,
            "-m",
            "phpo.evaluation_container",
            "--site",
            "s",
            "--server",
            "http://127.0.0.1:9",
            "--token-file",
            str(missing),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert p.returncode == 2 and f"cannot read the token file {missing}" in p.stderr
    p = subprocess.run(
        [
            PY,
            "-m",
            "phpo.evaluation_container",
            "--site",
            "s",
            "--server",
            "http://127.0.0.1:9",
            "--payload-user",
            "no-such-user-here",
        ],
        capture_output=True,
        text=True,
        env={**env, "PHPO_TOKEN": "t"},
        timeout=60,
        check=False,
    )
    assert p.returncode == 2 and "no user 'no-such-user-here'" in p.stderr
    p = subprocess.run(
        [PY, "-m", "phpo.evaluation_container", "--site", "s", "--steering-only", "--no-steering"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert p.returncode == 2 and "not allowed with" in p.stderr
    assert sys.executable  # the agent runs under the test's interpreter
