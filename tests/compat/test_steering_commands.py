"""Steering commands in the upstream documentation's own command-line styles, end to end: a real
server process, a real ``phpo agent`` process, and a real upstream steering tool (hpogrid with
nevergrad, from PyPI) or, for the container forms, a steering script in a real podman container."""

from __future__ import annotations

from agent.agent_helpers import (
    PY,
    base_spec,
    get_points,
    get_task,
    sandbox_upload,
    submit,
    wait_task,
    wait_until,
    write_payload,
)

from .upstream_material import DOCS_SEARCH_SPACE

# the payload: loss from the point; the very first evaluation fails (a point whose every attempt
# failed must not look pending to the steering)
PAYLOAD = """\
import json, os, sys
marker = sys.argv[1]
p = json.load(open("input.json"))
if not os.path.exists(marker):
    open(marker, "w").write("failed once")
    json.dump({"status": 1, "message": "the first evaluation fails"}, open("output.json", "w"))
else:
    loss = abs(p["batch_size"] - 20) / 10 + abs(p["epoch"] - 7) + (0.5 if p["auto_lr"] else 0.0)
    json.dump({"status": 0, "loss": loss}, open("output.json", "w"))
"""


def test_hpogrid_in_the_docs_style_runs_the_whole_budget(hpogrid, live_server, start_agent, tmp_path):
    """hpogrid subtracts the points it sees as pending (loss null) from %NUM_POINTS and answers
    [] when nothing is left, which ends the search. With upstream's defaults (a new iteration
    only when every point is done; a failed point handed over with iDDS's 1e5) it runs the whole
    budget; the docs' ``/bin/bash -c "... --infile=$PWD/%IN ..."`` string is used as written
    (hpogrid 1.3.3 also wants ``-s`` and spells the library ``-l nevergrad``)."""
    payload = write_payload(tmp_path / "train.py", PAYLOAD)
    steering = (
        f'/bin/bash -c "{hpogrid} generate --n_point=%NUM_POINTS --max_point=%MAX_POINTS '
        '--infile=$PWD/%IN  --outfile=$PWD/%OUT -l nevergrad -s unused"'
    )
    tid = submit(
        live_server,
        base_spec(
            f"{PY} {payload} {tmp_path / 'marker'}",
            optimizer=None,
            steeringExec=steering,
            searchSpace=DOCS_SEARCH_SPACE,
            maxPoints=4,
            nParallelEvaluation=2,
            nPointsPerIteration=2,
            maxAttempts=1,
        ),
    )
    agent = start_agent(live_server, "--slots", "2")
    t = wait_task(live_server, tid, timeout=120, agents=(agent,))
    pts = get_points(live_server, tid)
    assert t["state"] == "finished", (t, agent.log())
    assert len(pts) == 4 and t["counts"]["evaluated"] == 3 and t["counts"]["failed"] == 1, t["counts"]
    assert all(p["params"]["cnn_block_depths_1"] in (1, 2) for p in pts)
    assert "maxPoints (4)" in t["message"]


STEER_SH = """\
want=$1; max=$2; in=$3; out=$4
have=$(grep -o '"x"' "$in" | grep -c x)
python_here=no; [ -e /usr/bin/python3 ] && python_here=yes
if [ "$have" -ge "$max" ]; then echo '[]' > "$out"; exit 0; fi
echo "[{\\"x\\": $have, \\"in\\": \\"$in\\", \\"python_here\\": \\"$python_here\\", \\"want\\": $want}]" > "$out"
"""

EVAL = """\
import json
p = json.load(open("input.json"))
json.dump({"status": 0, "loss": float(p["x"])}, open("output.json", "w"))
"""


def _container_task(live_server, tmp_path, **steering) -> int:
    payload = write_payload(tmp_path / "eval.py", EVAL)
    sandbox = sandbox_upload(live_server, {"steer.sh": STEER_SH})
    spec = base_spec(
        f"{PY} {payload}",
        optimizer=None,
        searchSpace=None,
        maxPoints=2,
        nPointsPerIteration=1,
        sandbox=str(sandbox),
        **steering,
    )
    return submit(live_server, spec)


def test_docker_arguments_form_runs_in_the_agents_container_runtime(
    podman_service, live_server, start_agent, tmp_path
):
    """Without --steeringContainer upstream hands the string to docker: the pchain page's form
    ``run --rm -v "$(pwd)":/HPOiDDS IMAGE CMD`` runs in a container with the working directory
    mounted at /HPOiDDS, where %IN is found."""
    tid = _container_task(
        live_server,
        tmp_path,
        steeringExec=(
            f'run --rm -v "$(pwd)":/HPOiDDS {podman_service.image} /bin/sh /HPOiDDS/steer.sh '
            "%NUM_POINTS %MAX_POINTS /HPOiDDS/%IN /HPOiDDS/%OUT"
        ),
    )
    agent = start_agent(live_server, "--docker-url", podman_service.base_url)
    t = wait_task(live_server, tid, timeout=90, agents=(agent,))
    assert t["state"] == "finished", (t, agent.log())
    pts = sorted(get_points(live_server, tid), key=lambda p: p["params"]["x"])
    assert [p["params"]["x"] for p in pts] == [0, 1]
    for p in pts:
        assert p["params"]["in"] == "/HPOiDDS/idds_input.json" and p["params"]["python_here"] == "no"
        assert p["params"]["want"] == 1


def test_steering_container_form_with_pwd_paths(podman_service, live_server, start_agent, tmp_path):
    """--steeringContainer IMAGE: ``docker run --rm -v $(pwd):WORKDIR IMAGE CMD``; the phpo page's
    ``/bin/sh -c "... $PWD/%IN ..."`` finds its files in the container."""
    tid = _container_task(
        live_server,
        tmp_path,
        steeringContainer=podman_service.image,
        steeringExec='/bin/sh -c "sh $PWD/steer.sh %NUM_POINTS %MAX_POINTS $PWD/%IN $PWD/%OUT"',
    )
    agent = start_agent(live_server, "--docker-url", podman_service.base_url)
    t = wait_task(live_server, tid, timeout=90, agents=(agent,))
    assert t["state"] == "finished", (t, agent.log())
    pts = get_points(live_server, tid)
    assert sorted(p["params"]["x"] for p in pts) == [0, 1]
    assert all(
        p["params"]["python_here"] == "no" and p["params"]["in"].endswith("/idds_input.json") for p in pts
    )


def test_a_steering_container_task_waits_for_an_agent_with_a_runtime(live_server, start_agent, tmp_path):
    tid = _container_task(
        live_server,
        tmp_path,
        steeringContainer="example.org/steer:1",
        steeringExec="python steer.py %IN %OUT",
    )
    agent = start_agent(live_server, env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    t = wait_until(
        lambda: "steering" in ((t := get_task(live_server, tid)).get("waiting_for") or "") and t,
        40,
        "the task to say its steering waits",
        agent.log,
    )
    assert "--steeringContainer example.org/steer:1 needs a container runtime" in t["waiting_for"]
    assert t["counts"]["ready"] == 0 and not get_points(live_server, tid)
