"""The ``phpo`` command and the Python client against a real server (and a real agent).

Everything here is a real process on 127.0.0.1: ``python -m phpo.server`` on SQLite, and, for the
tests that need points evaluated, ``python -m phpo.evaluation_container`` running a tiny payload.
Each test works as its own user (a fresh token), so tests share one server without seeing each
other's tasks.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest
from conftest import LiveServer, free_port, run_phpo

from phpo.client import AuthError, Client, Conflict, InvalidInput, NotFound
from phpo.client import client as client_module

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "upstream"

QUAD = """\
import json, sys
p = json.load(open("input.json"))
print("evaluating x =", p["x"], flush=True)
if p.get("mode") == "crash":
    sys.exit(3)
json.dump({"status": 0, "loss": (p["x"] - 0.3) ** 2}, open("output.json", "w"))
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-server")
    port = free_port()
    s = LiveServer(url=f"http://127.0.0.1:{port}", port=port, data_dir=d, database_url=None, args=[])
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def agent(server, tmp_path_factory):
    """One real agent with two slots, for the tests that need evaluated points."""
    work = tmp_path_factory.mktemp("cli-agent")
    log = open(work / "agent.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "phpo.evaluation_container",
            "--server",
            server.url,
            "--site",
            "local",
            "--slots",
            "2",
            "--workdir",
            str(work / "wd"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "PHPO_TOKEN": server.agent_token},  # never on the command line
    )
    yield proc
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()


@pytest.fixture
def user(server):
    """A fresh user: (env for run_phpo, token)."""
    token = server.token(f"u{uuid.uuid4().hex[:8]}", "user")
    return {"PHPO_URL": server.url, "PHPO_TOKEN": token}, token


@pytest.fixture
def upstream_dir(tmp_path) -> Path:
    d = tmp_path / "upstream"
    shutil.copytree(EXAMPLES, d)
    return d


@pytest.fixture
def quad_dir(tmp_path) -> Path:
    d = tmp_path / "quad"
    d.mkdir()
    (d / "quad.py").write_text(QUAD)
    (d / "space.json").write_text(
        json.dumps({"x": {"method": "uniform", "dimension": {"low": 0, "high": 1}}})
    )
    return d


def quad_args(*extra: str) -> list[str]:
    return [
        "submit",
        "--evaluationExec",
        f"{sys.executable} quad.py",
        "--searchSpaceFile",
        "space.json",
        "--optimizer",
        "random",
        *extra,
        "--json",
    ]


# --- upstream submission -----------------------------------------------------------------


def test_upstream_example_is_submitted_and_stored_as_given(server, user, upstream_dir):
    env, token = user
    p = run_phpo("--loadJson", "config.json", "--dumpJson", "out.json", cwd=upstream_dir, env=env)
    dump = json.loads((upstream_dir / "out.json").read_text())
    assert dump["returnCode"] == 0
    task_id = dump["jediTaskID"]
    assert isinstance(task_id, int) and dump["taskID"] == task_id
    assert f"submitted task {task_id}" in p.stdout and str(task_id) in dump["returnOut"]

    with Client(server.url, token) as c:
        task = c.task(task_id)
        assert task.name == "user.alice.hpo.mnist.example"
        conf = json.loads((upstream_dir / "config.json").read_text())
        assert task.spec.steeringExec == conf["steeringExec"]  # placeholders kept byte for byte
        assert task.spec.optimizer_name == "external"
        assert task.spec.searchSpace == json.loads((upstream_dir / "search_space.json").read_text())
        assert task.spec.nParallelEvaluation == 3 and task.spec.maxEvaluationJobs == 20
        # the sandbox: the *.json *.py *.sh *.yaml of the submit directory
        assert task.spec.sandbox is not None
        data = c.read_artifact(int(task.spec.sandbox))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == ["config.json", "exec_in_container.sh", "search_space.json"]


def test_nosubmit_stores_nothing(server, user, upstream_dir):
    env, token = user
    run_phpo("--loadJson", "config.json", "--noSubmit", cwd=upstream_dir, env=env)
    run_phpo("submit", "--loadJson", "config.json", "--noSubmit", "--outDS", "x", cwd=upstream_dir, env=env)
    with server.client(token) as h:
        page = h.get("/tasks").json()
    assert page["total"] == 0 and page["items"] == []


def test_command_line_wins_over_json_on_the_server(server, user, upstream_dir):
    env, token = user
    p = run_phpo(
        "--loadJson",
        "config.json",
        "--maxPoints",
        "3",
        "--outDS",
        "override",
        "--json",
        cwd=upstream_dir,
        env=env,
    )
    task = json.loads(p.stdout)
    assert task["spec"]["maxPoints"] == 3 and task["name"] == "override"
    assert task["spec"]["nParallelEvaluation"] == 3  # from the JSON


def test_dumpjson_on_a_refused_submission_holds_the_servers_message(server, upstream_dir):
    env = {"PHPO_URL": server.url, "PHPO_TOKEN": "phpo_not-a-real-token"}
    p = run_phpo(
        "--loadJson", "config.json", "--dumpJson", "out.json", cwd=upstream_dir, env=env, check=False
    )
    assert p.returncode == 1
    dump = json.loads((upstream_dir / "out.json").read_text())
    assert dump["returnCode"] == 1 and dump["jediTaskID"] is None and dump["taskID"] is None
    assert "HTTP 401" in dump["returnOut"] and dump["returnOut"] in p.stderr


def test_agent_token_cannot_submit_and_says_so(server, upstream_dir):
    env = {"PHPO_URL": server.url, "PHPO_TOKEN": server.agent_token}
    p = run_phpo("--loadJson", "config.json", cwd=upstream_dir, env=env, check=False)
    assert p.returncode == 1 and "HTTP 403" in p.stderr


# --- task commands -----------------------------------------------------------------------


def test_list_show_pause_resume_kill_with_json(server, user, quad_dir):
    env, _ = user
    # the state changes are what is tested, so the task must not finish first: a large budget
    p = run_phpo(*quad_args("--maxPoints", "1000", "--outDS", "life"), cwd=quad_dir, env=env)
    tid = json.loads(p.stdout)["id"]

    listed = json.loads(run_phpo("list", "--json", env=env).stdout)
    assert [t["id"] for t in listed] == [tid] and listed[0]["name"] == "life"
    assert json.loads(run_phpo("list", "--json", "--state", "cancelled", env=env).stdout) == []
    assert "life" in run_phpo("list", env=env).stdout  # the table

    shown = json.loads(run_phpo("show", str(tid), "--json", env=env).stdout)
    assert shown["id"] == tid and shown["spec"]["evaluationExec"].endswith("quad.py")
    assert f"task {tid}" in run_phpo("show", str(tid), env=env).stdout

    assert json.loads(run_phpo("pause", str(tid), "--json", env=env).stdout)["state"] == "paused"
    assert json.loads(run_phpo("resume", str(tid), "--json", env=env).stdout)["state"] == "running"
    assert json.loads(run_phpo("kill", str(tid), "--json", env=env).stdout)["state"] == "cancelled"

    # a second kill is refused by the server; its message reaches the user
    again = run_phpo("kill", str(tid), env=env, check=False)
    assert again.returncode == 7  # the server refused (409), see `phpo --help`
    assert "cancelled" in again.stderr and "HTTP 409" in again.stderr

    # wait on a task that ended without finishing: non-zero
    w = run_phpo("wait", str(tid), "--json", env=env, check=False)
    assert w.returncode == 1 and json.loads(w.stdout)["state"] == "cancelled"


def test_errors_carry_the_servers_message(server, user):
    env, token = user
    p = run_phpo("show", "987654", env=env, check=False)
    assert p.returncode == 4 and "987654" in p.stderr and "HTTP 404" in p.stderr  # nothing to show
    with Client(server.url, token) as c:
        with pytest.raises(NotFound) as e:
            c.task(987654)
        assert e.value.code == "not_found" and "987654" in e.value.message
        with pytest.raises(NotFound):
            c.cancel(987654)
    with Client(server.url, "phpo_wrong") as c, pytest.raises(AuthError) as e:
        c.tasks()
    assert e.value.status == 401 and e.value.message


def test_client_api_round_trip(server, user, quad_dir):
    _, token = user
    space = json.loads((quad_dir / "space.json").read_text())
    with Client(server.url, token) as c:
        assert c.me().role == "user"
        t = c.submit(
            {"evaluationExec": "true", "searchSpace": space}, maxPoints=500, outDS="api", optimizer="random"
        )
        assert t.spec.maxPoints == 500 and t.name == "api"
        assert [x.id for x in c.tasks(name="api")] == [t.id]
        assert c.tasks(name="nope") == []
        # a state filter the server does not know: its 4xx and message come back as InvalidInput
        with pytest.raises(InvalidInput) as e:
            c.points(t.id, state="bogus")
        assert "bogus" in e.value.message and e.value.field == "state"
        # local validation: the same exception type, naming the option
        with pytest.raises(InvalidInput) as e:
            c.submit(evaluationExec="true", searchSpace=space, maxPoints=0)
        assert e.value.field == "maxPoints"
        assert c.pause(t.id).state == "paused"
        assert c.cancel(t.id).state == "cancelled"
        with pytest.raises(Conflict):
            c.resume(t.id)
        assert len(c.best(t.id)) == 1
        with pytest.raises(NotFound, match="no segment named 'nope'"):
            c.points(t.id, segment="nope")
        with pytest.raises(InvalidInput, match="not one of"):
            c.download(t.id, "bogus")
        assert isinstance(c.iterations(t.id), list)


def test_wait_times_out_with_exit_3(server, user, quad_dir):
    env, token = user
    with Client(server.url, token) as c:
        t = c.submit(evaluationExec="true", searchSpace={"x": [0.0, 1.0]}, maxPoints=1000, optimizer="random")
        c.pause(t.id)  # nothing will run it
    p = run_phpo("wait", str(t.id), "--timeout", "1", "--poll", "0.2", env=env, check=False)
    assert p.returncode == 3 and "still paused" in p.stderr


def test_segmented_best_needs_segments(server, user, tmp_path):
    env, _ = user
    (tmp_path / "segs.json").write_text(
        json.dumps([{"name": "photons", "files": []}, {"name": "electrons", "files": []}])
    )
    (tmp_path / "space.json").write_text(json.dumps({"x": [0.0, 1.0]}))
    p = run_phpo(
        "submit",
        "--evaluationExec",
        "true %SEGMENT_NAME",
        "--searchSpaceFile",
        "space.json",
        "--segmentSpecFile",
        "segs.json",
        "--maxPoints",
        "100",
        "--json",
        cwd=tmp_path,
        env=env,
    )
    tid = json.loads(p.stdout)["id"]
    plain = run_phpo("best", str(tid), env=env, check=False)
    assert plain.returncode == 2 and "--segments" in plain.stderr
    seg = run_phpo("best", str(tid), "--segments", "--json", env=env, check=False)
    assert seg.returncode == 4  # nothing evaluated yet
    best = json.loads(seg.stdout)
    assert [b["segment"] for b in best] == ["photons", "electrons"]
    assert all(set(b) >= {"segment", "loss", "params"} for b in best)
    run_phpo("kill", str(tid), env=env)


# --- with an agent: points really evaluated ------------------------------------------------


def test_a_task_runs_to_the_end(server, agent, user, quad_dir, tmp_path, monkeypatch):
    env, token = user
    p = run_phpo(
        *quad_args("--maxPoints", "5", "--nParallelEvaluation", "2", "--outDS", "quad"), cwd=quad_dir, env=env
    )
    tid = json.loads(p.stdout)["id"]

    w = run_phpo("wait", str(tid), "--poll", "0.3", env=env, check=False, timeout=180)
    assert w.returncode == 0, w.stdout + w.stderr
    assert "finished" in w.stdout and "5/5 evaluated" in w.stdout
    assert "evaluated" in w.stderr  # the progress lines (stderr is not a terminal here)

    best = json.loads(run_phpo("best", str(tid), "--json", env=env).stdout)
    assert set(best) == {"loss", "params"}
    assert best["loss"] == pytest.approx((best["params"]["x"] - 0.3) ** 2)

    with Client(server.url, token) as c:
        points = c.points(tid)
        assert len(points) == 5 and all(p.state == "evaluated" for p in points)
        assert min(p.loss for p in points) == pytest.approx(best["loss"])
        # paging: the client walks every page whatever the page size
        monkeypatch.setattr(client_module, "PAGE_SIZE", 2)
        assert [p.id for p in c.points(tid)] == [p.id for p in points]
        logs = c.download(tid, "log", tmp_path / "logs")
    assert logs and any("evaluating x =" in f.read_text() for f in logs)
    assert all(f.parent.name.startswith("point-") for f in logs)

    csv_out = run_phpo("best", str(tid), "--csv", env=env).stdout.splitlines()
    assert csv_out[0] == "point,loss,x" and len(csv_out) == 2

    out = run_phpo("logs", str(tid), env=env).stdout
    assert out.count("evaluating x =") >= 5
    first = points[0].id
    one = json.loads(run_phpo("logs", str(tid), "--point", str(first), "--json", env=env).stdout)
    assert one and all(x["artifact"]["point_id"] == first for x in one)
    assert f"x = {points[0].params['x']}" in "".join(x["text"] for x in one)


# --- phpo up -------------------------------------------------------------------------------


def test_phpo_up_writes_the_config_and_stops_cleanly_on_ctrl_c(tmp_path):
    cfg = tmp_path / "cfg"
    data = tmp_path / "data"
    port = free_port()
    env = {**os.environ, "XDG_CONFIG_HOME": str(cfg)}
    env.pop("PHPO_URL", None)
    env.pop("PHPO_TOKEN", None)
    exe = Path(sys.executable).with_name("phpo")
    proc = subprocess.Popen(
        [str(exe), "up", "--data-dir", str(data), "--port", str(port), "--slots", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        config = cfg / "phpo" / "config.toml"
        deadline = time.monotonic() + 90
        while not config.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert config.exists(), proc.stderr.read() if proc.poll() is not None else "no config after 90 s"
        assert f"127.0.0.1:{port}" in config.read_text()
        assert oct(config.stat().st_mode & 0o777) == "0o600"
        # another shell: no --url/--token, the config file is enough
        listed = run_phpo(
            "list", "--json", env={"XDG_CONFIG_HOME": str(cfg), "PHPO_URL": "", "PHPO_TOKEN": ""}
        )
        assert json.loads(listed.stdout) == []
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "phpo is up" in out and str(data) in out and "config.toml" in out
    assert "stopped." in err
    with pytest.raises(OSError):  # the server is gone
        import socket

        socket.create_connection(("127.0.0.1", port), timeout=1).close()
