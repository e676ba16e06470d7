"""Upstream's file formats and string conventions, piece by piece: placeholders anywhere, the
docker forms read as docker would, repeated categorical values weighted as nevergrad weights
them, a plain list of spaces per segment, and JSON number types kept through the database."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from phpo.evaluation_container.runners.base import ExecutorError, RunSpec
from phpo.evaluation_container.runners.docker import container_kwargs
from phpo.evaluation_container.steering_command import expand_like_a_shell, parse_docker_run, prepare
from phpo.schemas.search_space import parse_search_space
from phpo.schemas.tasks import TaskSpec
from phpo.schemas.upstream import steering_command_line, substitute_placeholders
from phpo.steering.base import OptimizerConfig
from phpo.steering.registry import create_optimizer

from server.helpers import acquire, create_task, wait_until
from .upstream_material import DOCS_CONFIG, DOCS_SEARCH_SPACE


def test_placeholders_are_replaced_anywhere_as_plain_text():
    cmd = (
        '/bin/bash -c "tool --max_points=%MAX_POINTS --n=%NUM_POINTS --infile=$PWD/%IN --outfile=/data/%OUT"'
    )
    got = substitute_placeholders(
        cmd, {"%MAX_POINTS": "20", "%NUM_POINTS": "2", "%IN": "idds_input.json", "%OUT": "output.json"}
    )
    assert got == (
        '/bin/bash -c "tool --max_points=20 --n=2 --infile=$PWD/idds_input.json --outfile=/data/output.json"'
    )


def test_the_steering_command_line_of_each_form():
    docs = steering_command_line(DOCS_CONFIG["steeringExec"], DOCS_CONFIG["steeringContainer"], 2, 10)
    assert docs.startswith(
        'docker run --rm -v "$(pwd)":"$(pwd)" -w "$(pwd)" '
        'gitlab-registry.cern.ch/zhangruihpc/steeringcontainer:latest /bin/bash -c "hpogrid'
    )
    assert "--n_point=2 --max_point=10 --infile=$PWD/idds_input.json" in docs
    assert (
        steering_command_line("run --rm -v $(pwd):/X img cmd %IN", None, 1, 1)
        == "docker run --rm -v $(pwd):/X img cmd idds_input.json"
    )
    assert (
        steering_command_line("python steer.py %IN %OUT %NUM_POINTS", None, 3, 9)
        == "python steer.py idds_input.json output.json 3"
    )


def test_docker_arguments_are_read_as_docker_reads_them(tmp_path):
    words = expand_like_a_shell(
        'run --rm -it -v "$(pwd)":/HPOiDDS:z -e A=1 --name x img /bin/bash -c "a $PWD b"',
        tmp_path,
        {"PATH": "/usr/bin:/bin"},
    )
    run = parse_docker_run(words, tmp_path)
    assert run.image == "img" and run.argv == ["/bin/bash", "-c", f"a {tmp_path} b"]
    assert run.mounts == {str(tmp_path.resolve()): "/HPOiDDS"} and run.env == {"A": "1"}
    with pytest.raises(ExecutorError, match="may mount only its working directory"):
        parse_docker_run(["run", "-v", "/etc:/x", "img"], tmp_path)
    with pytest.raises(ExecutorError, match="'--frobnicate' is not known"):
        parse_docker_run(["run", "--frobnicate", "img"], tmp_path)
    with pytest.raises(ExecutorError, match="names no image"):
        parse_docker_run(["run", "--rm"], tmp_path)


def test_a_docker_form_becomes_a_container_spec(tmp_path):
    spec = RunSpec(command="", workdir=tmp_path, stdout_path=tmp_path / "o", stderr_path=tmp_path / "e")
    prepare(
        spec,
        'run --rm -v "$(pwd)":/HPOiDDS docker://reg/steer:1 python /HPOiDDS/s.py /HPOiDDS/%IN',
        None,
        2,
        8,
    )
    kw = container_kwargs(spec)
    assert kw["image"] == "reg/steer:1"  # upstream's docker:// prefix is dropped for the engine
    assert kw["command"] == ["python", "/HPOiDDS/s.py", "/HPOiDDS/idds_input.json"]
    assert kw["volumes"] == {str(tmp_path.resolve()): {"bind": "/HPOiDDS", "mode": "rw"}}
    assert "entrypoint" not in kw and "read_only" not in kw  # as docker run: the image's own
    shell = RunSpec(command="", workdir=tmp_path, stdout_path=tmp_path / "o", stderr_path=tmp_path / "e")
    prepare(shell, "python steer.py --in=$PWD/%IN --max=%MAX_POINTS", None, 2, 8)
    assert shell.command == "python steer.py --in=$PWD/idds_input.json --max=8" and shell.argv is None


def test_the_docs_search_space_with_a_repeated_category_is_accepted():
    space = parse_search_space(DOCS_SEARCH_SPACE)
    assert space.params["cnn_block_depths_1"].choices == [1, 1, 2]


@pytest.mark.parametrize("name", ["random", "optuna.random", "optuna.tpe", "skopt.gp"])
def test_a_repeated_value_is_weighted_as_nevergrad_weights_it(name):
    """nevergrad's Choice([1, 1, 2]) draws an entry, so 1 comes twice as often as 2: the first
    point of each optimizer (drawn from the prior), over many seeds."""
    space = parse_search_space({"d": {"method": "categorical", "dimension": {"categories": [1, 1, 2]}}})
    n = 60 if name == "skopt.gp" else 120  # skopt builds slowly
    got = Counter(
        create_optimizer(name, OptimizerConfig(space=space, seed=seed, options={})).ask(1, [])[0]["d"]
        for seed in range(n)
    )
    assert set(got) == {1, 2}
    assert 0.5 < got[1] / n < 0.85, got


def test_a_grid_visits_a_repeated_value_once():
    space = parse_search_space({"d": {"method": "categorical", "dimension": {"categories": [1, 1, 2]}}})
    opt = create_optimizer("grid", OptimizerConfig(space=space, seed=0, options={}))
    assert sorted(p["d"] for p in opt.ask(5, [])) == [1, 2]


def test_a_plain_list_of_spaces_gives_one_space_per_segment():
    a = {"x": {"method": "uniform", "dimension": {"low": 0, "high": 1}}}
    b = {"y": {"method": "uniformint", "dimension": {"low": 1, "high": 3}}}
    spec = TaskSpec(evaluationExec="run", searchSpace=[a, b], segments=[{"name": "A"}, {"name": "B"}])
    assert [list(s.params) for s in spec.segment_spaces()] == [["x"], ["y"]]
    with pytest.raises(ValueError, match="2 search spaces for 3 segments"):
        TaskSpec(evaluationExec="run", searchSpace=[a, b], segments=[{"name": n} for n in "ABC"])


def test_segment_names_must_be_in_the_training_dataset():
    with pytest.raises(ValueError, match="segment 'A': file 'file_9' is not in trainingDS"):
        TaskSpec(
            evaluationExec="run",
            searchSpace=DOCS_SEARCH_SPACE,
            trainingFiles=["/d/file_1"],
            segments=[{"name": "A", "files": ["file_9"]}],
        )
    spec = TaskSpec(
        evaluationExec="run",
        searchSpace=DOCS_SEARCH_SPACE,
        trainingFiles=["/d/photons/f1.tar", "/d/photons/f2.tar", "/d/electrons/f3.tar"],
        segments=[{"name": "ph", "datasets": ["photons"]}, {"name": "el", "files": ["electrons/f3.tar"]}],
    )
    assert spec.segment_training_files() == [
        ["/d/photons/f1.tar", "/d/photons/f2.tar"],
        ["/d/electrons/f3.tar"],
    ]


def test_number_types_survive_the_database_into_the_steering_input(db_url, start_server):
    """0.0 stays 0.0 and 0 stays 0 in %IN, after the points went through SQLite or PostgreSQL:
    steering tools parse their own space and may check a value's type."""
    srv = start_server(db_url)
    with srv.client() as c, srv.client(srv.agent_token) as a:
        create_task(
            c,
            optimizer=None,
            steeringExec="python steer.py %IN %OUT",
            maxPoints=2,
            nPointsPerIteration=1,
            searchSpace=None,
        )
        sj = wait_until(lambda: acquire(a, kinds=["steering"]), what="a steering job")
        a.post(f"/jobs/{sj['id']}/complete", json={"steering_output": [{"lr": 0.0, "n": 0, "big": 1e300}]})
        j = wait_until(lambda: acquire(a, kinds=["evaluation"]), what="the evaluation")
        pid = j["points"][0]["point_id"]
        a.post(f"/jobs/{j['id']}/points/{pid}/result", json={"point_id": pid, "loss": 0})
        a.post(f"/jobs/{j['id']}/complete", json={})
        sj = wait_until(lambda: acquire(a, kinds=["steering"]), what="the second steering job")
    text = json.dumps(sj["steering"]["input"]["points"])
    assert text == '[[{"lr": 0.0, "n": 0, "big": 1e+300}, 0.0]]', text
