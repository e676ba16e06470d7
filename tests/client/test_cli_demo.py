"""``phpo demo`` as a new user runs it: the embedded stack, a real HPO, exit 0.

Real everything: server and agent processes, scikit-learn training on the bundled digits data,
checkpoints uploaded. A smaller budget than the default keeps the suite fast.
"""

from __future__ import annotations

import tomllib

import pytest
from conftest import run_phpo

from phpo.client import Client

pytestmark = pytest.mark.slow


def test_demo_runs_a_real_hpo_and_leaves_the_user_config_alone(tmp_path, start_server):
    pytest.importorskip("sklearn", reason="phpo demo needs the demo extra (scikit-learn)")
    cfg = tmp_path / "cfg"
    data = tmp_path / "demo"
    p = run_phpo(
        "demo",
        "--max-points",
        "4",
        "--parallel",
        "2",
        "--data-dir",
        str(data),
        env={"XDG_CONFIG_HOME": str(cfg), "PHPO_URL": "", "PHPO_TOKEN": ""},
        timeout=240,
    )
    out = p.stdout
    assert "task 1 finished" in out and "4 points evaluated, 0 failed" in out
    assert "checkpoints uploaded" in out
    assert "best point" in out and "validation error" in out and "accuracy" in out
    assert f"phpo up --data-dir {data}" in out  # where to look next, for the kept data
    assert "evaluated" in p.stderr  # live progress
    assert not (cfg / "phpo" / "config.toml").exists()  # the user's config is untouched

    # what the summary points to: a server on the kept data directory shows the same task
    server = start_server(data_dir=data)
    token = tomllib.loads((data / "stack-tokens.toml").read_text())["user_token"]
    with Client(server.url, token) as c:
        task = c.task(1)
        points = c.points(1)
        best = c.best(1)[0]
    assert task.state == "finished" and task.name == "demo.digits-mlp"
    assert task.spec.checkPointToSave == "checkpoint"
    assert len(points) == 4 and all(p.state == "evaluated" for p in points)
    assert all(0.0 <= p.loss < 1.0 for p in points)
    assert best.loss == min(p.loss for p in points) < 0.2  # an MLP on digits: >80 % accuracy somewhere
    assert f"{best.loss:.4g}" in out
    assert set(best.params) >= {"learning_rate_init", "hidden_units", "alpha"}


def test_demo_without_scikit_learn_says_what_to_install(tmp_path):
    """A Python where importing sklearn fails, as after a client-only install."""
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sklearn.py").write_text(
        "raise ImportError('No module named sklearn (blocked for this test)')\n"
    )
    p = run_phpo("demo", env={"PYTHONPATH": str(blocker)}, check=False, timeout=60)
    assert p.returncode == 2
    assert "pip install 'phpo[demo]'" in p.stderr
