"""phpo's command line against the real panda-client 2.2.0 (PyPI): the same command lines and
files are accepted, panda-client's own ``--dumpJson`` output submits when fed back, and the
task parameters panda-client would send agree with what phpo runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import run_phpo

from phpo.client.cli.upstream import build_spec, collect_options
from phpo.client.cli.main import submit_parser
from phpo.steering.external import build_steering_input

from .upstream_material import DOCS_CONFIG, DOCS_SEARCH_SPACE, DOCS_SEGMENTS, PCHAIN_CONFIG

DRIVER = """
import json, sys
sys.argv = ["phpo"] + json.loads(sys.argv[1])
from pandaclient import PhpoScript
mode = sys.argv.pop(-1)
if mode == "params":
    json.dump(PhpoScript.main(get_taskparams=True, dry_mode=True), open("taskparams.json", "w"))
else:
    try:
        PhpoScript.main(dry_mode=True)
    except SystemExit:
        pass
"""


def panda_env(panda_client: Path, cwd: Path) -> dict[str, str]:
    """panda-client's environment: its server is an address where nothing listens, so a
    submission fails at once, as it would without a network."""
    nowhere = "http://127.0.0.1:9/server/panda"
    return {
        **os.environ,
        "PYTHONPATH": str(panda_client),
        "PANDA_URL": nowhere,
        "PANDA_URL_SSL": nowhere,
        "PANDACACHE_URL": nowhere,
        "PANDA_CONFIG_ROOT": str(cwd / ".pathena"),
        "PANDA_VERIFY_HOST": "off",
    }


def panda_phpo(panda_client: Path, cwd: Path, *args: str, mode: str = "run") -> subprocess.CompletedProcess:
    """panda-client's own phpo, in dry mode (no grid proxy needed)."""
    return subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps([*args, mode])],
        cwd=cwd,
        env=panda_env(panda_client, cwd),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _docs_dir(tmp_path: Path, config: dict) -> Path:
    d = tmp_path / "user"
    d.mkdir()
    (d / "config_dev.json").write_text(json.dumps(config))
    (d / "search_space_example2.json").write_text(json.dumps(DOCS_SEARCH_SPACE))
    (d / "exec_in_container.sh").write_text("python train.py\n")
    return d


def test_panda_clients_own_dump_submits_when_fed_back(panda_client, live_server, tmp_path):
    d = _docs_dir(tmp_path, DOCS_CONFIG)
    p = panda_phpo(
        panda_client,
        d,
        "--loadJson",
        "config_dev.json",
        "--site",
        "XYZ",
        "--outDS",
        "user.blah.test",
        "--dumpJson",
        "dump.json",
    )
    dump = json.loads((d / "dump.json").read_text())
    assert dump["returnCode"] == 1 and "jediTaskID" in dump and dump["helpGroup"] is None, p.stderr
    assert dump["steeringExec"] == DOCS_CONFIG["steeringExec"] and dump["outDS"] == "user.blah.test/"

    env = {"PHPO_URL": live_server.url, "PHPO_TOKEN": live_server.user_token}
    r = run_phpo("--loadJson", "dump.json", "--json", cwd=d, env=env, check=False)
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if "returnCode" in line]
    assert len(notes) == 1 and "'returnOut'" in notes[0] and "'jediTaskID'" in notes[0]
    spec = json.loads(r.stdout)["spec"]
    assert spec["steeringExec"] == DOCS_CONFIG["steeringExec"]
    assert spec["steeringContainer"] == DOCS_CONFIG["steeringContainer"]
    assert spec["site"] == "XYZ" and spec["maxEvaluationJobs"] == 20 and spec["outDS"] == "user.blah.test/"
    assert spec["searchSpace"] == DOCS_SEARCH_SPACE  # with its repeated category
    assert spec["maxPointsPerEvaluationJob"] == 1 and spec["checkPointInterval"] == 5.0  # null: the default


def _option_names(text: str) -> set[str]:
    """The options a help text lists: the first word of each indented entry line."""
    return set(re.findall(r"^  (--?[A-Za-z0-9]\w*)", text, re.M)) - {"-h", "--help"}


GROUPS_DRIVER = """
import sys
from pandaclient import PhpoScript
for group in ("ALL", "INPUT", "OUTPUT", "CONFIG", "SUBMIT", "EXPERT"):
    print(f"=== {group}", flush=True)
    sys.argv = ["phpo", "--helpGroup", group]
    try:
        PhpoScript.main(dry_mode=True)
    except SystemExit:
        pass
    sys.stdout.flush()
"""


def _sections(text: str, head: str) -> dict[str, str]:
    """Split a help text at lines matching ``head`` (a regex with one group: the name)."""
    out: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        m = re.match(head, line)
        if m:
            name = m.group(1).upper()
            out[name] = ""
        elif name:
            out[name] += line + "\n"
    return out


def test_every_panda_client_option_and_help_group_is_accepted(panda_client, tmp_path):
    p = subprocess.run(
        [sys.executable, "-c", GROUPS_DRIVER],
        cwd=tmp_path,
        env=panda_env(panda_client, tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    theirs = {g: _option_names(t) - {"--helpGroup"} for g, t in _sections(p.stdout, r"^=== (\w+)$").items()}
    assert {"--nParallelEvaluation", "--segmentSpecFile", "--official", "--intrSrv", "-3"} <= theirs["ALL"]
    ours_text = run_phpo("--helpGroup", "ALL").stdout
    ours = {g: _option_names(t) for g, t in _sections(ours_text, r"^([A-Z]+): ").items()}
    ours_all = set().union(*ours.values())
    assert theirs["ALL"] <= ours_all, theirs["ALL"] - ours_all
    for g in ("INPUT", "OUTPUT", "CONFIG", "SUBMIT", "EXPERT"):
        assert theirs[g] and theirs[g] <= ours[g], (g, theirs[g] - ours[g])
    assert _option_names(run_phpo("--helpGroup", "submit").stdout) == ours["SUBMIT"]


def test_upstream_only_options_are_accepted_and_named_in_one_notice(panda_client, tmp_path):
    d = _docs_dir(tmp_path, PCHAIN_CONFIG)
    extra = [
        "--official",
        "--workingGroup",
        "GP",
        "-3",
        "--voms",
        "atlas:/atlas/Role=production",
        "--noEmail",
        "--intrSrv",
        "--alrbArgs",
        "--nocvmfs --nohome",
    ]
    base = ["--loadJson", "config_dev.json", "--outDS", "user.blah.x"]
    assert panda_phpo(panda_client, d, *base, *extra, mode="params").returncode == 0
    r = run_phpo(*base, *extra, "-v", "--noSubmit", cwd=d, env={"PHPO_URL": "http://127.0.0.1:9"})
    notes = [line for line in r.stderr.splitlines() if "without effect" in line]
    assert len(notes) == 1, r.stderr
    for flag in ("--official", "--workingGroup", "-3", "--voms", "--noEmail", "--intrSrv", "--alrbArgs"):
        assert flag in notes[0]
    assert "task: {" in r.stderr  # -v: verbose


def test_task_parameters_agree_with_panda_clients(panda_client, tmp_path):
    """A segmented task: panda-client multiplies the point budget by the number of segments for
    the steering (``%MAX_POINTS``) and clones the search space per segment; phpo's steering gets
    the same, and its segments get their own files of the training dataset."""
    d = _docs_dir(tmp_path, PCHAIN_CONFIG)
    (d / "seg.json").write_text(json.dumps(DOCS_SEGMENTS))
    data = d / "blah"
    data.mkdir()
    for name in ("file_1", "file_2", "file_3"):
        (data / name).write_text(name)
    args = [
        "--loadJson",
        "config_dev.json",
        "--searchSpaceFile",
        "search_space_example2.json",
        "--segmentSpecFile",
        "seg.json",
        "--trainingDS",
        "blah",
        "--maxPoints",
        "3",
        "--outDS",
        "user.blah.seg",
    ]
    assert panda_phpo(panda_client, d, *args, mode="params").returncode == 0
    theirs = json.loads((d / "taskparams.json").read_text())
    hpo = theirs["hpoRequestData"]

    ns = submit_parser().parse_args(["--loadJson", str(d / "config_dev.json"), *args[2:]])
    spec = build_spec(collect_options(ns, warn=lambda m: None), base=d)
    assert spec.total_max_points == hpo["max_points"] == 6
    assert spec.nPointsPerIteration == hpo["num_points_per_generation"]
    assert "min_unevaluated_points" not in hpo and spec.min_unevaluated_points == 0
    ours = build_steering_input([], spec.searchSpace, segmented=True, n_segments=len(spec.segment_names))
    assert ours["opt_space"] == hpo["opt_space"]
    assert [s["name"] for s in theirs["segmentSpecs"]] == spec.segment_names
    assert spec.segment_training_files() == [
        [str(data / "file_1"), str(data / "file_3")],
        [str(data / "file_2")],
    ]
    r = run_phpo(*args, "--noSubmit", cwd=d, env={"PHPO_URL": "http://127.0.0.1:9"})
    line = next(x for x in r.stderr.splitlines() if x.startswith("steering"))
    assert "--max_point=6" in line and "--n_point=2" in line and "/HPOiDDS/idds_input.json" in line, line
    assert line.split(": ", 1)[1].startswith('docker run --rm -v "$(pwd)":/HPOiDDS ')
