"""End to end: a real server process, the agent as a real process
(``python -m phpo.evaluation_container``), payloads as small Python scripts. Tasks use the
``grid`` optimizer over x in {0,1,2,3} so nothing here waits on a slow optimizer."""

from __future__ import annotations

import itertools
import json
import signal
import statistics
import time

from .agent_helpers import (
    PY,
    base_spec,
    get_artifacts,
    get_points,
    get_task,
    pid_alive,
    sandbox_upload,
    submit,
    wait_task,
    wait_until,
    write_payload,
)

# --------------------------------------------------------------------------- a task completes

TRAIN = """\
import json, os, sys, time
from phpo.evaluation_container import sdk

p = sdk.load_point()
files = sdk.training_files()
assert files == ["/data/a.root", "/data/b.root"], files
assert os.environ["PHPO_SITE"] == "local" and "PHPO_TOKEN" not in os.environ
for step in (1, 2):
    assert sdk.report_intermediate(step, p["x"] * step)
json.dump({"x": p["x"]}, open("meta.json", "w"))
open("metrics.txt", "w").write(f"x={p['x']}\\n")
print("hello from point", p["x"])
for i in range(3000):
    print(f"noise {i}", file=sys.stderr)
sdk.report(float((p["x"] - 2) ** 2), metrics={"n_files": len(files), "cwd": os.getcwd()})
"""


def test_task_completes_with_sandbox_files_and_artifacts(live_server, start_agent):
    sb = sandbox_upload(live_server, {"train.py": TRAIN})
    tid = submit(
        live_server,
        base_spec(
            f"{PY} train.py",
            sandbox=str(sb),
            nParallelEvaluation=2,
            trainingFiles=["/data/a.root", "/data/b.root"],
            evaluationMeta="meta.json",
            evaluationMetrics="metrics.txt",
        ),
    )
    agent = start_agent(live_server, "--slots", "2", "--max-log-mb", "0.01")
    t = wait_task(live_server, tid, agents=(agent,))
    assert t["state"] == "finished", t
    pts = get_points(live_server, tid)
    assert [p["state"] for p in pts] == ["evaluated"] * 4
    assert [p["loss"] for p in pts] == [float((p["params"]["x"] - 2) ** 2) for p in pts]  # 0.0 included
    assert all(p["metrics"]["n_files"] == 2 for p in pts)
    assert len({p["metrics"]["cwd"] for p in pts}) == 4  # a working directory per job
    assert all(
        [(v["step"], v["value"]) for v in p["intermediate"]]
        == [(1, p["params"]["x"]), (2, 2 * p["params"]["x"])]
        for p in pts
    )
    assert len(get_artifacts(live_server, tid, "meta")) == 4
    assert len(get_artifacts(live_server, tid, "metrics")) == 4
    logs = [a for a in get_artifacts(live_server, tid, "log") if a["name"].endswith("stdout.txt")]
    assert len(logs) == 4
    with live_server.client() as c:
        text = c.get(f"/artifacts/{logs[0]['id']}").text
    x = next(p["params"]["x"] for p in pts if p["id"] == logs[0]["point_id"])
    assert text.strip() == f"hello from point {x}"
    # stderr was ~30 kB: only its last 10 kB are kept (--max-log-mb 0.01)
    errs = [a for a in get_artifacts(live_server, tid, "log") if a["name"].endswith("stderr.txt")]
    assert len(errs) == 4 and all(a["size"] < 10_600 for a in errs)
    with live_server.client() as c:
        text = c.get(f"/artifacts/{errs[0]['id']}").text
    assert text.startswith("[phpo: first") and text.rstrip().endswith("noise 2999")
    # job directories are removed once their jobs end
    # (just after: the result that ends the task goes with complete, the directory goes after it)
    wait_until(lambda: not any((agent.workdir / "jobs").iterdir()), 10, "job directories to be removed")


MULTI = """\
import json, os
p = json.load(open("input.json"))
assert not os.path.exists("ckpt"), "the previous point's checkpoint leaked into this one"
assert not os.path.exists("output.json"), "the previous point's output is still there"
os.makedirs("ckpt")
open("ckpt/x", "w").write(str(p["x"]))
json.dump({"status": 0, "loss": p["x"] + 0.5, "metrics": {"pid": os.getpid(), "cwd": os.getcwd()}},
          open("output.json", "w"))
"""


def test_several_points_in_one_job(live_server, start_agent, tmp_path):
    script = write_payload(tmp_path / "multi.py", MULTI)
    tid = submit(
        live_server,
        base_spec(
            f"{PY} {script}",
            maxPoints=3,
            nParallelEvaluation=3,
            nPointsPerIteration=3,
            maxPointsPerEvaluationJob=3,
            checkPointToSave="ckpt",
        ),
    )
    # start the agent once the three points exist, so one job takes all of them
    wait_until(lambda: len(get_points(live_server, tid)) == 3, 30, "3 points")
    agent = start_agent(live_server, "--once")
    t = wait_task(live_server, tid, agents=(agent,))
    assert t["state"] == "finished" and t["counts"]["jobs"] == 1, t
    assert agent.wait(30) == 0  # --once: one job, then exit
    pts = get_points(live_server, tid)
    assert [p["loss"] for p in pts] == [p["params"]["x"] + 0.5 for p in pts]
    assert len({p["metrics"]["cwd"] for p in pts}) == 1  # same working directory ...
    assert len({p["metrics"]["pid"] for p in pts}) == 3  # ... one run after another


# --------------------------------------------------------------------------- failures


CRASH_ONCE = """\
import json, os, sys
p = json.load(open("input.json"))
if p["x"] == 1 and os.environ["PHPO_ATTEMPT"] == "1":
    print("boom: simulated crash on the first attempt", file=sys.stderr)
    sys.exit(3)
json.dump({"status": 0, "loss": float(p["x"]), "metrics": {"attempt": int(os.environ["PHPO_ATTEMPT"])}},
          open("output.json", "w"))
"""


def test_payload_crash_is_retried_then_succeeds(live_server, start_agent, tmp_path):
    script = write_payload(tmp_path / "crash.py", CRASH_ONCE)
    tid = submit(live_server, base_spec(f"{PY} {script}", nParallelEvaluation=2))
    agent = start_agent(live_server)
    t = wait_task(live_server, tid, agents=(agent,))
    assert t["state"] == "finished", t
    pts = {p["params"]["x"]: p for p in get_points(live_server, tid)}
    assert all(p["state"] == "evaluated" and p["loss"] == float(x) for x, p in pts.items())
    # the real count: the crash, then the run that worked (the payload saw PHPO_ATTEMPT=2)
    assert pts[1]["metrics"]["attempt"] == 2 and pts[1]["attempts"] == 2
    assert all(pts[x]["attempts"] == 1 for x in (0, 2, 3))
    logs = get_artifacts(live_server, tid, "log")
    crash_log = [a for a in logs if a["point_id"] == pts[1]["id"] and a["name"].endswith("a1.stderr.txt")]
    assert len(crash_log) == 1  # the failed attempt's stderr is kept


BAD = """\
import json, sys
p = json.load(open("input.json"))
x = p["x"]
print(f"stderr line of point {x}", file=sys.stderr)
if x == 0:
    open("output.json", "w").write("{this is not json")
elif x == 1:
    json.dump({"status": 2, "message": "training diverged"}, open("output.json", "w"))
elif x == 2:
    sys.exit(1)
else:
    json.dump({"status": 0, "loss": 1.0}, open("output.json", "w"))
"""


def test_bad_output_and_nonzero_status_are_visible(live_server, start_agent, tmp_path):
    script = write_payload(tmp_path / "bad.py", BAD)
    tid = submit(live_server, base_spec(f"{PY} {script}", nParallelEvaluation=2, maxAttempts=1))
    agent = start_agent(live_server)
    wait_until(
        lambda: (
            all(p["state"] in ("evaluated", "failed") for p in get_points(live_server, tid))
            and len(get_points(live_server, tid)) == 4
        ),
        60,
        "all points settled",
        lambda: agent.log()[-4000:],
    )
    pts = {p["params"]["x"]: p for p in get_points(live_server, tid)}
    assert [pts[x]["state"] for x in range(4)] == ["failed", "failed", "failed", "evaluated"]
    assert "not valid JSON" in pts[0]["error"] and "stderr line of point 0" in pts[0]["error"]
    assert "status 2: training diverged" in pts[1]["error"] and "stderr line of point 1" in pts[1]["error"]
    assert "exited with code 1" in pts[2]["error"] and "wrote no output file" in pts[2]["error"]
    assert all(pts[x]["loss"] is None for x in range(3))  # never a made-up loss


SPAWN_AND_HANG = """\
import json, subprocess, sys, time
p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(sys.argv[1], "w").write(str(p.pid))
time.sleep(600)
"""


def test_timeout_kills_the_whole_process_group(live_server, start_agent, tmp_path):
    script = write_payload(tmp_path / "hang.py", SPAWN_AND_HANG)
    pidfile = tmp_path / "grandchild.pid"
    tid = submit(
        live_server, base_spec(f"{PY} {script} {pidfile}", maxPoints=1, maxAttempts=1, evaluationTimeout=2)
    )
    agent = start_agent(live_server)
    wait_until(pidfile.exists, 30, "the payload to start its grandchild", agent.log)
    grandchild = int(pidfile.read_text())
    assert pid_alive(grandchild)
    p = wait_until(
        lambda: (p := get_points(live_server, tid)[0])["state"] == "failed" and p,
        40,
        "the point to fail",
        agent.log,
    )
    assert "timed out after 2 s" in p["error"]
    wait_until(lambda: not pid_alive(grandchild), 10, "the grandchild to be gone")


def test_container_task_on_an_agent_without_runtime(live_server, start_agent):
    """An agent without a container runtime never takes a container task's point (it would
    only fail it); the task says which requirement no agent meets while it waits for one."""
    tid = submit(
        live_server, base_spec("python train.py", evaluationContainer="example.org/train:1", maxPoints=1)
    )
    agent = start_agent(live_server, env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    t = wait_until(
        lambda: "container" in ((t := get_task(live_server, tid)).get("waiting_for") or "") and t,
        40,
        "the task to name what it waits for",
        agent.log,
    )
    assert "--evaluationContainer example.org/train:1" in t["waiting_for"]
    assert "no agent has a container runtime" in t["waiting_for"]
    p = get_points(live_server, tid)[0]
    assert p["state"] == "ready" and p["attempts"] == 0  # never handed to an agent that cannot run it


# --------------------------------------------------------------------------- agent death and resume

EPOCHS = """\
import json, os, sys, time
from phpo.evaluation_container import sdk

N = 12
p = sdk.load_point()
open(sys.argv[1], "a").write(f"{os.getpid()}\\n")
start = 0
ck = sdk.latest_checkpoint()
if ck is not None:
    start = json.load(open(ck / "state.json"))["epoch"] + 1
acc = 0.0
if start:
    acc = json.load(open(ck / "state.json"))["acc"]
for epoch in range(start, N):
    time.sleep(0.25)
    acc += p["x"] + epoch
    os.makedirs("ckpt", exist_ok=True)
    with open("ckpt/tmp.json", "w") as f:
        json.dump({"epoch": epoch, "acc": acc}, f)
    os.replace("ckpt/tmp.json", "ckpt/state.json")
sdk.report(acc, metrics={"start_epoch": start})
"""


def expected_acc(x: int, n: int = 12) -> float:
    return float(sum(x + e for e in range(n)))


def test_kill9_agent_then_another_resumes_from_checkpoint(start_server, start_agent, tmp_path):
    server = start_server(None, "--lease-seconds", "3", "--reaper-interval", "0.5")
    script = write_payload(tmp_path / "epochs.py", EPOCHS)
    pids = tmp_path / "payload.pids"
    tid = submit(
        server,
        base_spec(
            f"{PY} {script} {pids}",
            maxPoints=1,
            searchSpace={"params": {"x": {"type": "int", "low": 3, "high": 3}}},
            checkPointToSave="ckpt",
            checkPointInterval="1s",
        ),
    )
    first = start_agent(server)
    wait_until(lambda: get_artifacts(server, tid, "checkpoint"), 30, "a checkpoint upload", first.log)
    first.signal(signal.SIGKILL)
    first.wait(10)
    payload_pid = int(pids.read_text().split()[0])
    wait_until(lambda: not pid_alive(payload_pid), 10, "the orphaned payload to die with its agent")
    # the lease expires, the reaper hands the point back; a second agent takes it
    second = start_agent(server)
    t = wait_task(server, tid, timeout=60, agents=(second,))
    assert t["state"] == "finished", t
    (p,) = get_points(server, tid)
    assert p["metrics"]["start_epoch"] > 0, "the second run started from scratch"
    assert p["loss"] == expected_acc(3)  # resumed state + remaining epochs = the uninterrupted result
    assert p["attempts"] == 2  # the run with the lost lease, then the one that finished
    assert "resumes from checkpoint" in second.log()


# --------------------------------------------------------------------------- SIGTERM

SLEEPER = """\
import json, sys, time
p = json.load(open("input.json"))
open(sys.argv[1], "a").write("started\\n")
time.sleep(float(sys.argv[2]))
json.dump({"status": 0, "loss": float(p["x"])}, open("output.json", "w"))
"""


def test_sigterm_lets_the_running_job_finish(live_server, start_agent, tmp_path):
    script = write_payload(tmp_path / "sleeper.py", SLEEPER)
    marks = tmp_path / "marks"
    tid = submit(live_server, base_spec(f"{PY} {script} {marks} 2", maxPoints=2, nParallelEvaluation=2))
    agent = start_agent(live_server)
    wait_until(marks.exists, 30, "the payload to start", agent.log)
    agent.signal(signal.SIGTERM)
    assert agent.wait(30) == 0
    assert "stop requested" in agent.log()
    states = sorted(p["state"] for p in get_points(live_server, tid))
    assert states == ["evaluated", "ready"], states  # finished its job, took no new one
    assert get_task(live_server, tid)["counts"]["jobs"] == 1


def test_sigterm_after_grace_hands_the_point_back_with_a_checkpoint(live_server, start_agent, tmp_path):
    script = write_payload(tmp_path / "epochs.py", EPOCHS.replace("N = 12", "N = 400"))
    pids = tmp_path / "payload.pids"
    tid = submit(
        live_server,
        base_spec(f"{PY} {script} {pids}", maxPoints=1, checkPointToSave="ckpt", checkPointInterval=600),
    )
    agent = start_agent(live_server, "--grace-seconds", "1")
    wait_until(pids.exists, 30, "the payload to start", agent.log)
    time.sleep(1.0)  # a few epochs: the checkpoint files exist (the interval is too long to upload them)
    agent.signal(signal.SIGTERM)
    assert agent.wait(40) == 0, agent.log()
    assert not pid_alive(int(pids.read_text().split()[0]))
    (p,) = get_points(live_server, tid)
    assert p["state"] == "ready" and p["attempts"] == 1, p
    assert "shutting down" in p["error"]
    ckpts = get_artifacts(live_server, tid, "checkpoint")
    assert len(ckpts) == 1 and ckpts[0]["point_id"] == p["id"]  # the last checkpoint, uploaded on the way out


# --------------------------------------------------------------------------- server away

REPORT_AFTER = """\
import json, sys, time
p = json.load(open("input.json"))
open(sys.argv[1], "w").write("started")
time.sleep(float(sys.argv[2]))
json.dump({"status": 0, "loss": p["x"] * 10.0}, open("output.json", "w"))
open(sys.argv[1], "w").write("done")
"""


def test_result_arrives_after_the_server_was_away(live_server, start_agent, tmp_path):
    script = write_payload(tmp_path / "late.py", REPORT_AFTER)
    mark = tmp_path / "mark"
    tid = submit(
        live_server,
        base_spec(
            f"{PY} {script} {mark} 1.5",
            maxPoints=1,
            searchSpace={"params": {"x": {"type": "int", "low": 2, "high": 2}}},
        ),
    )
    agent = start_agent(live_server, "--retry-seconds", "1", "--outbox-interval", "0.5")
    wait_until(lambda: mark.exists() and mark.read_text() == "started", 30, "the payload to start", agent.log)
    live_server.kill()
    wait_until(lambda: mark.read_text() == "done", 30, "the payload to finish")
    agent.wait_log("kept in", timeout=30)  # the result went to the on-disk outbox
    assert list((agent.workdir / "outbox").glob("*.json"))
    live_server.start()  # same port, same data directory
    t = wait_task(live_server, tid, timeout=60, agents=(agent,))
    assert t["state"] == "finished", t
    (p,) = get_points(live_server, tid)
    assert p["loss"] == 20.0 and p["attempts"] == 1  # one run: its result waited in the outbox
    wait_until(lambda: not list((agent.workdir / "outbox").glob("*.json")), 10, "the outbox to empty")


# --------------------------------------------------------------------------- steering jobs

STEER = """\
import json, sys
inp, out, num, mx = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
data = json.load(open(inp))
done = len(data["points"])
assert data["opt_space"] == {"x": {"method": "uniformint", "dimension": {"low": 0, "high": 9}}}
print(f"steering: {done} points so far, {num} wanted, budget {mx}", file=sys.stderr)
new = [{"x": i} for i in range(done, min(done + num, mx))]
json.dump(new, open(out, "w"))
"""

EVAL_X = """\
import json
p = json.load(open("input.json"))
json.dump({"loss": p["x"] * 1.5}, open("output.json", "w"))
"""


def test_steering_jobs_run_on_a_steering_agent(live_server, start_agent, tmp_path):
    steer = write_payload(tmp_path / "steer.py", STEER)
    ev = write_payload(tmp_path / "ev.py", EVAL_X)
    spec = base_spec(
        f"{PY} {ev}",
        maxPoints=3,
        nParallelEvaluation=2,
        steeringExec=f"{PY} {steer} %IN %OUT %NUM_POINTS %MAX_POINTS",
        searchSpace={"x": {"method": "uniformint", "dimension": {"low": 0, "high": 9}}},
    )
    spec.pop("optimizer")
    tid = submit(live_server, spec)
    steering = start_agent(live_server, "--steering-only")
    evaluator = start_agent(live_server, "--no-steering")
    t = wait_task(live_server, tid, agents=(steering, evaluator))
    assert t["state"] == "finished", t
    pts = get_points(live_server, tid)
    assert sorted(p["params"]["x"] for p in pts) == [0, 1, 2]
    assert all(p["loss"] == p["params"]["x"] * 1.5 for p in pts)
    assert "steering for task" in steering.log() and "steering for task" not in evaluator.log()
    assert "point" in evaluator.log() and "started" in evaluator.log()


def test_failed_steering_shows_its_stderr(live_server, start_agent, tmp_path):
    steer = write_payload(
        tmp_path / "steer.py",
        "import sys\nprint('steer-broke: no module foo', file=sys.stderr)\nsys.exit(1)\n",
    )
    spec = base_spec(
        "true",
        maxPoints=2,
        steeringExec=f"{PY} {steer} %IN %OUT",
        searchSpace={"x": {"method": "uniformint", "dimension": {"low": 0, "high": 9}}},
    )
    spec.pop("optimizer")
    tid = submit(live_server, spec)
    agent = start_agent(live_server, "--steering-only")
    t = wait_task(live_server, tid, agents=(agent,))
    assert t["state"] == "failed"
    with live_server.client() as c:
        its = c.get(f"/tasks/{tid}/iterations").json()["items"]
    assert its and all("steer-broke: no module foo" in (i["error"] or "") for i in its)
    assert all("wrote no output file" in i["error"] for i in its)


# --------------------------------------------------------------------------- refill latency

TIMED = """\
import json, time
t0 = time.time()
p = json.load(open("input.json"))
time.sleep(0.3)
json.dump({"loss": float(p["x"]), "metrics": {"t_start": t0, "t_end": time.time()}}, open("output.json", "w"))
"""


def test_one_point_jobs_chain_through_complete(start_server, start_agent, tmp_path):
    """A one-point job's result goes with ``complete``, and that same call leases the slot's
    next job: counted in the server's access log (debug level), a 4-point task on one slot
    needs no ``/result`` call and fewer ``acquire`` calls than jobs."""
    srv = start_server(None, "--log-level", "debug")
    script = write_payload(
        tmp_path / "quick.py",
        """
        import json
        p = json.load(open("input.json"))
        json.dump({"loss": float(p["x"])}, open("output.json", "w"))
    """,
    )
    agent = start_agent(srv)
    wait_until(lambda: "agent test-agent-0 at site" in agent.log(), 30, "the agent to start")
    tid = submit(srv, base_spec(f"{PY} {script}", maxPoints=4, nParallelEvaluation=2))
    t = wait_task(srv, tid, agents=(agent,))
    assert t["state"] == "finished" and t["counts"]["evaluated"] == 4, t
    # the last complete answers after its "next" long poll found nothing more (<= poll interval)
    log = wait_until(lambda: (t := srv.log()).count("/complete HTTP") >= 4 and t, 10, "4 completes logged")
    assert log.count("/complete HTTP") == 4
    assert "/result HTTP" not in log, "one-point jobs should report through complete"
    leased_by_acquire = log.count('/jobs/acquire HTTP/1.1" 200')
    # the first job comes from acquire, the other three from complete's "next"
    assert leased_by_acquire == 1, f"{leased_by_acquire} jobs leased by acquire: jobs are not chained"


def test_refill_latency(live_server, start_agent, tmp_path):
    """Measures (does not assert) the time from a payload's end to the next payload's start on
    one slot: with a point already waiting (nParallelEvaluation 2) it is the agent's and the
    server's own latency; with nParallelEvaluation 1 the next point is generated only after the
    previous result, so steering is included. The one assertion: one slot never runs two
    payloads at once."""
    script = write_payload(tmp_path / "timed.py", TIMED)
    agent = start_agent(live_server)
    report = {}
    for n_par in (2, 1):
        tid = submit(live_server, base_spec(f"{PY} {script}", maxPoints=4, nParallelEvaluation=n_par))
        wait_task(live_server, tid, agents=(agent,))
        runs = sorted((p["metrics"]["t_start"], p["metrics"]["t_end"]) for p in get_points(live_server, tid))
        gaps = [b[0] - a[1] for a, b in itertools.pairwise(runs)]
        assert all(g > 0 for g in gaps), gaps
        report[f"nParallelEvaluation={n_par}"] = {
            "gaps_s": [round(g, 3) for g in gaps],
            "median_s": round(statistics.median(gaps), 3),
        }
    print("\nREFILL LATENCY (payload end -> next payload start, one slot):", json.dumps(report))
