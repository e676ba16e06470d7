"""The sandbox end to end: what the Python client and ``phpo submit`` ship is what a real agent
unpacks for the payload, subdirectories and explicitly named files included; the README's Python
example, run as it is written, gives a best point."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import run_phpo

from phpo.client import Client

from .agent_helpers import REPO, get_points, get_task, wait_task

pytestmark = pytest.mark.slow

# imports a module from a subdirectory and reads a data file that only ships when named
TRAIN = """\
import json, pathlib
from helpers.scale import distance
p = json.load(open("input.json"))
offset = float(pathlib.Path("data/offset.txt").read_text()) if pathlib.Path("data/offset.txt").exists() else 0.0
json.dump({"status": 0, "loss": distance(p["lr"]) + offset}, open("output.json", "w"))
"""
SCALE = """\
import math
def distance(lr):
    return (math.log10(lr) + 2) ** 2
"""


def _project(d: Path) -> Path:
    (d / "helpers").mkdir(parents=True)
    (d / "train.py").write_text(TRAIN)
    (d / "helpers" / "__init__.py").write_text("")
    (d / "helpers" / "scale.py").write_text(SCALE)
    (d / "search_space.json").write_text(json.dumps({"lr": [1e-4, 1e-1]}))
    (d / "data").mkdir()
    (d / "data" / "offset.txt").write_text("100\n")
    (d / ".env.json").write_text('{"secret": 1}')
    return d


def _env_with_python() -> dict[str, str]:
    """``python`` on PATH is this interpreter (the README's examples say ``python train.py``)."""
    return {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def readme_python_example() -> str:
    text = (REPO / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "Client(" in b and ".submit(" in b]
    assert blocks, "the README has no Python example with Client(...).submit(...)"
    return blocks[0]


def test_readme_python_example_verbatim_gives_a_best_point(start_server, start_agent, tmp_path):
    server = start_server()
    agent = start_agent(server, "--slots", "2", env=_env_with_python())
    d = _project(tmp_path / "work")
    (d / "example.py").write_text(readme_python_example())
    p = subprocess.run(
        [sys.executable, "example.py"],
        cwd=d,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **_env_with_python(), "PHPO_URL": server.url, "PHPO_TOKEN": server.user_token},
    )
    assert p.returncode == 0, p.stdout + p.stderr + agent.log()[-3000:]
    loss, params = p.stdout.strip().splitlines()[-1].split(" ", 1)
    assert loss != "None" and float(loss) >= 0 and "'lr'" in params, p.stdout
    with Client(server.url, server.user_token) as c:
        (task,) = c.tasks()
        assert task.state == "finished" and task.counts.evaluated == 10 and task.counts.failed == 0
        assert task.spec.searchSpace == {"lr": [1e-4, 1e-1]}  # read from searchSpaceFile
        with tarfile.open(fileobj=io.BytesIO(c.read_artifact(int(task.spec.sandbox))), mode="r:gz") as tar:
            names = set(tar.getnames())
    # the subdirectory shipped (the payload imported it); data/offset.txt and .env.json did not
    assert {"train.py", "helpers/scale.py", "search_space.json"} <= names
    assert "data/offset.txt" not in names and ".env.json" not in names
    assert float(loss) < 100


def test_cli_ships_named_files_lists_what_stayed_home_and_caps_the_size(start_server, start_agent, tmp_path):
    server = start_server()
    agent = start_agent(server, env=_env_with_python())
    d = _project(tmp_path / "work")
    env = {"PHPO_URL": server.url, "PHPO_TOKEN": server.user_token}
    args = [
        "submit",
        "--evaluationExec",
        f"{sys.executable} train.py",
        "--searchSpaceFile",
        "search_space.json",
        "--maxPoints",
        "2",
        "--optimizer",
        "random",
    ]

    dry = run_phpo(*args, "--noSubmit", cwd=d, env=env)
    assert "helpers/scale.py" in dry.stderr and "left out of the sandbox" in dry.stderr
    assert ".env.json" in dry.stderr and "data/offset.txt" in dry.stderr and "--sandboxFiles" in dry.stderr

    # over the cap: a clear error naming the file, nothing stored
    (d / "data" / "big.bin").write_bytes(b"\0" * 300_000)
    big = run_phpo(
        *args, "--sandboxFiles", "data/", cwd=d, env={**env, "PHPO_SANDBOX_MAX_MB": "0.2"}, check=False
    )
    assert big.returncode == 1 and "data/big.bin (0.3 MB)" in big.stderr and "0.2 MB limit" in big.stderr
    with Client(server.url, server.user_token) as c:
        assert c.tasks() == []
    (d / "data" / "big.bin").unlink()

    out = run_phpo(*args, "--sandboxFiles", "data/offset.txt", "--json", cwd=d, env=env)
    tid = json.loads(out.stdout)["id"]
    assert "left out of the sandbox" in out.stderr and ".env.json" in out.stderr
    t = wait_task(server, tid, timeout=60, agents=(agent,))
    assert t["state"] == "finished", (t, agent.log()[-3000:])
    # the payload found helpers/ and the named data file: every loss carries the offset
    assert all(p["loss"] >= 100 for p in get_points(server, tid)), get_points(server, tid)
    assert get_task(server, tid)["spec"]["sandbox"]
