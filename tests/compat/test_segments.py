"""Segmented HPO as the phpo page writes it: the segment file names files of --trainingDS, and
each segment's jobs get those files, as paths they can open."""

from __future__ import annotations

import json

from agent.agent_helpers import PY, get_points, wait_task, write_payload
from conftest import run_phpo

from .upstream_material import DOCS_SEGMENTS

PAYLOAD = """\
import json, os, sys
files = json.load(open("input_ds.json"))
ok = all(os.path.isfile(f) for f in files)
names = sorted(os.path.basename(f) for f in files)
json.dump({"status": 0 if ok else 1, "loss": float(len(names)), "message": "cannot open " + repr(files),
           "metrics": {"segment": sys.argv[1], "files": names}}, open("output.json", "w"))
"""


def test_segment_files_are_names_in_the_training_dataset(live_server, start_agent, tmp_path):
    d = tmp_path / "user"
    data = d / "blah"
    data.mkdir(parents=True)
    for name in ("file_1", "file_2", "file_3"):
        (data / name).write_text(name)
    (d / "seg.json").write_text(json.dumps(DOCS_SEGMENTS))
    payload = write_payload(tmp_path / "toy.py", PAYLOAD)
    env = {"PHPO_URL": live_server.url, "PHPO_TOKEN": live_server.user_token}
    common = [
        "--evaluationExec",
        f"{PY} {payload} %SEGMENT_NAME",
        "--segmentSpecFile",
        "seg.json",
        "--trainingDS",
        "blah",
        "--optimizer",
        "random",
        "--optimizerOptions",
        '{"seed": 1}',
        "--maxPoints",
        "1",
        "--searchSpaceFile",
        "space.json",
        "--outDS",
        "seg",
    ]
    (d / "space.json").write_text(
        json.dumps({"x": {"method": "uniform", "dimension": {"low": 0, "high": 1}}})
    )
    # a name the dataset does not hold is refused at submit, naming it
    (d / "bad.json").write_text(json.dumps([{"name": "A", "files": ["file_9"]}]))
    bad = run_phpo(*common, "--segmentSpecFile", "bad.json", cwd=d, env=env, check=False)
    assert bad.returncode == 2 and "file 'file_9' is not in trainingDS" in bad.stderr, bad.stderr
    r = run_phpo(*common, "--json", cwd=d, env=env)
    tid = json.loads(r.stdout)["id"]
    agent = start_agent(live_server)
    t = wait_task(live_server, tid, timeout=60, agents=(agent,))
    assert t["state"] == "finished", t
    seen = {p["metrics"]["segment"]: p["metrics"]["files"] for p in get_points(live_server, tid)}
    assert seen == {"name_A": ["file_1", "file_3"], "name_B": ["file_2"]}
