"""``phpo run-local``: the payload once, here, in a job-like directory, judged by the agent's rules,
so a missing file or a crash shows in seconds. Real payload processes, no server."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from conftest import run_phpo

TRAIN = """\
import json, os, pathlib, sys
from lib.model import loss
p = json.load(open(os.environ["PHPO_INPUT_FILE"]))
print("training with", p, flush=True)
files = json.load(open("input_ds.json")) if pathlib.Path("input_ds.json").exists() else []
offset = float(pathlib.Path("data.csv").read_text())  # only there when shipped with --sandboxFiles
if p.get("act") == "crash":
    sys.exit("the model diverged")
json.dump({"status": 0, "loss": loss(p["lr"]) + offset, "n_files": len(files)}, open("output.json", "w"))
"""


@pytest.fixture
def project(tmp_path) -> Path:
    d = tmp_path / "project"
    (d / "lib").mkdir(parents=True)
    (d / "train.py").write_text(TRAIN)
    (d / "lib" / "model.py").write_text("import math\ndef loss(lr):\n    return (math.log10(lr) + 2) ** 2\n")
    (d / "data.csv").write_text("1.5\n")
    (d / "space.json").write_text(
        json.dumps(
            {
                "lr": {"method": "loguniform", "dimension": {"low": 1e-4, "high": 1.0}},
                "act": {"method": "categorical", "dimension": {"categories": ["relu", "crash"]}},
            }
        )
    )
    return d


def _args(*extra: str) -> list[str]:
    return [
        "run-local",
        "--evaluationExec",
        f"{sys.executable} train.py",
        "--searchSpaceFile",
        "space.json",
        *extra,
    ]


def test_a_file_the_sandbox_leaves_out_shows_at_once_then_the_payload_works(project, tmp_path):
    t0 = time.monotonic()
    missing = run_phpo(*_args("--json", "--workdir", str(tmp_path / "job1")), cwd=project, check=False)
    assert time.monotonic() - t0 < 30  # seconds, not three attempts on a site
    assert missing.returncode == 1
    out = json.loads(missing.stdout)
    assert out["ok"] is False and out["point"] == {"lr": pytest.approx(0.01), "act": "relu"}
    assert "data.csv" in out["message"] and "No such file" in out["message"]
    assert "wrote no output file 'output.json'" in out["message"]  # the agent's own words
    assert "left out of the sandbox" in missing.stderr and "data.csv" in missing.stderr
    assert Path(out["workdir"], "run", "lib", "model.py").is_file()  # the sandbox, subdirectory included
    assert not Path(out["workdir"], "run", "data.csv").exists()

    data = tmp_path / "train-data"
    data.mkdir()
    for n in ("a.root", "b.root"):
        (data / n).write_text("x")
    ok = run_phpo(*_args("--sandboxFiles", "data.csv", "--trainingDS", str(data), "--json"), cwd=project)
    res = json.loads(ok.stdout)
    assert res["ok"] is True and res["status"] == 0 and res["exit_code"] == 0
    assert res["loss"] == pytest.approx(1.5)  # (log10(0.01) + 2)^2 + the shipped offset
    assert res["metrics"] == {"n_files": 2}  # output.json's own key kept, as the agent keeps it
    assert "training with" in ok.stderr  # the payload's output streams through
    assert not Path(res["workdir"]).exists()  # a working run leaves nothing behind


def test_a_crash_a_timeout_and_a_given_point(project, tmp_path):
    crash = run_phpo(
        *_args(
            "--sandboxFiles",
            "data.csv",
            "--point",
            '{"lr": 0.1, "act": "crash"}',
            "--workdir",
            str(tmp_path / "job1"),
        ),
        cwd=project,
        check=False,
    )
    assert crash.returncode == 1 and "would fail" in crash.stderr
    assert "exited with code 1" in crash.stderr and "the model diverged" in crash.stderr

    (project / "slow.py").write_text("import time\ntime.sleep(60)\n")
    t0 = time.monotonic()
    slow = run_phpo(
        "run-local",
        "--evaluationExec",
        f"{sys.executable} slow.py",
        "--searchSpaceFile",
        "space.json",
        "--timeout",
        "1",
        "--workdir",
        str(tmp_path / "job2"),
        cwd=project,
        check=False,
    )
    assert slow.returncode == 1 and "timed out after 1 s" in slow.stderr
    assert time.monotonic() - t0 < 20

    bad = run_phpo(*_args("--point", "[1, 2]"), cwd=project, check=False)
    assert bad.returncode == 2 and "--point" in bad.stderr
