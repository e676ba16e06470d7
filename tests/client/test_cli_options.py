"""The upstream submission options (docs/compatibility.md, The command line): names, --loadJson, --noSubmit, --dumpJson.

These run the installed ``phpo`` command; none of them needs a server (``--noSubmit`` and bad
input never reach one). Submissions to a real server are in test_cli_e2e.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_phpo

from phpo.client.cli import main as cli_main
from phpo.client.cli.upstream import (
    CliError,
    build_spec,
    collect_options,
    load_json_options,
    resolve_training_ds,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "upstream"

# docs/compatibility.md, exactly as upstream spells them
UPSTREAM_OPTIONS = [
    "loadJson",
    "dumpJson",
    "nParallelEvaluation",
    "maxPoints",
    "maxEvaluationJobs",
    "maxPointsPerEvaluationJob",
    "nPointsPerIteration",
    "minUnevaluatedPoints",
    "steeringContainer",
    "steeringExec",
    "searchSpaceFile",
    "evaluationContainer",
    "evaluationExec",
    "evaluationInput",
    "evaluationTrainingData",
    "evaluationOutput",
    "evaluationMeta",
    "evaluationMetrics",
    "checkPointToSave",
    "checkPointToLoad",
    "checkPointInterval",
    "architecture",
    "segmentSpecFile",
    "trainingDS",
    "outDS",
    "site",
    "noSubmit",
]
EXTENSIONS = [
    "optimizer",
    "optimizerOptions",
    "directions",
    "maxAttempts",
    "evaluationTimeout",
    "nProcessesPerPoint",
    "launcher",
]

NO_SERVER = {"PHPO_URL": "http://127.0.0.1:9", "PHPO_TOKEN": "unused"}


@pytest.fixture
def upstream_dir(tmp_path) -> Path:
    """A copy of examples/upstream: the upstream documentation's setup."""
    d = tmp_path / "upstream"
    shutil.copytree(EXAMPLES, d)
    return d


def test_help_lists_every_upstream_option_and_says_the_command_line_wins():
    out = run_phpo("--help").stdout
    for name in UPSTREAM_OPTIONS + EXTENSIONS:
        assert f"--{name} " in out or f"--{name}\n" in out, name
    assert "command line wins over the JSON" in " ".join(out.split())
    assert "submit" in out and "demo" in out  # the commands are listed too


def test_submit_subcommand_has_the_same_options():
    out = run_phpo("submit", "--help").stdout
    for name in UPSTREAM_OPTIONS + EXTENSIONS:
        assert f"--{name}" in out, name


def test_upstream_example_is_accepted_with_nosubmit(upstream_dir):
    p = run_phpo("--loadJson", "config.json", "--noSubmit", cwd=upstream_dir, env=NO_SERVER)
    spec = json.loads(p.stdout)
    assert spec["steeringExec"].startswith("run --rm -v")
    assert "%NUM_POINTS" in spec["steeringExec"] and "%OUT" in spec["steeringExec"]
    assert spec["searchSpace"]["learning_rate"] == {
        "method": "loguniform",
        "dimension": {"low": 1e-5, "high": 0.1},
    }
    assert spec["searchSpaceFile"] == "search_space.json"
    assert spec["nParallelEvaluation"] == 3 and spec["maxPoints"] == 10
    assert "nothing was submitted" in p.stderr
    assert "exec_in_container.sh" in p.stderr  # the sandbox it would send


def test_command_line_wins_over_the_json(upstream_dir):
    p = run_phpo(
        "--loadJson",
        "config.json",
        "--noSubmit",
        "--maxPoints",
        "4",
        "--outDS",
        "mine",
        cwd=upstream_dir,
        env=NO_SERVER,
    )
    spec = json.loads(p.stdout)
    assert spec["maxPoints"] == 4 and spec["outDS"] == "mine"
    assert spec["nParallelEvaluation"] == 3  # from the JSON, not overridden


def test_option_order_does_not_matter(upstream_dir):
    p = run_phpo(
        "--maxPoints", "5", "--loadJson", "config.json", "--noSubmit", cwd=upstream_dir, env=NO_SERVER
    )
    assert json.loads(p.stdout)["maxPoints"] == 5


def test_unknown_json_keys_are_named_in_one_warning_and_ignored(upstream_dir):
    """As panda-client: a key that is no option is ignored with a warning (a typo gets a hint),
    so a file written for (or by) upstream submits."""
    conf = json.loads((upstream_dir / "config.json").read_text())
    conf.update(maxPoint=3, colour="blue")
    (upstream_dir / "bad.json").write_text(json.dumps(conf))
    p = run_phpo("--loadJson", "bad.json", "--noSubmit", cwd=upstream_dir, env=NO_SERVER, check=False)
    assert p.returncode == 0
    warnings = [line for line in p.stderr.splitlines() if "ignored 2 keys" in line]
    assert len(warnings) == 1
    assert "'maxPoint' (did you mean 'maxPoints'?)" in warnings[0] and "'colour'" in warnings[0]
    assert json.loads(p.stdout)["maxPoints"] == 10  # the typo set nothing


def test_dumpjson_with_nosubmit(upstream_dir):
    run_phpo(
        "--loadJson", "config.json", "--noSubmit", "--dumpJson", "out.json", cwd=upstream_dir, env=NO_SERVER
    )
    dump = json.loads((upstream_dir / "out.json").read_text())
    assert dump["returnCode"] == 0 and "noSubmit" in dump["returnOut"]
    assert dump["jediTaskID"] is None and dump["taskID"] is None
    for name in UPSTREAM_OPTIONS:
        assert name in dump, name
    assert dump["maxPointsPerEvaluationJob"] == 1  # defaults are written too


def test_bad_search_space_is_refused_naming_the_parameter(upstream_dir):
    (upstream_dir / "bad_space.json").write_text(
        json.dumps(
            {
                "lr": {"method": "loguniform", "dimension": {"low": 1e-3, "high": 1e-1}},
                "drop": {"method": "triangular", "dimension": {"low": 0, "high": 1}},
            }
        )
    )
    p = run_phpo(
        "--loadJson",
        "config.json",
        "--searchSpaceFile",
        "bad_space.json",
        "--noSubmit",
        cwd=upstream_dir,
        env=NO_SERVER,
        check=False,
    )
    assert p.returncode == 2
    assert "drop" in p.stderr and "triangular" in p.stderr


def test_missing_evaluation_exec_is_named(tmp_path):
    (tmp_path / "s.json").write_text('{"x": [0, 1]}')
    p = run_phpo("--searchSpaceFile", "s.json", "--noSubmit", cwd=tmp_path, env=NO_SERVER, check=False)
    assert p.returncode == 2 and "evaluationExec" in p.stderr


def test_missing_search_space_file_is_named(tmp_path):
    p = run_phpo(
        "--evaluationExec",
        "true",
        "--searchSpaceFile",
        "nope.json",
        "--noSubmit",
        cwd=tmp_path,
        env=NO_SERVER,
        check=False,
    )
    assert p.returncode == 2 and "--searchSpaceFile: cannot read 'nope.json'" in p.stderr


def test_wrong_type_on_the_command_line(tmp_path):
    p = run_phpo("--maxPoints", "many", "--noSubmit", cwd=tmp_path, env=NO_SERVER, check=False)
    assert p.returncode == 2 and "--maxPoints" in p.stderr and "many" in p.stderr


def test_unknown_command_is_named():
    p = run_phpo("lsit", check=False)
    assert p.returncode == 2 and "unknown command 'lsit'" in p.stderr and "list" in p.stderr


# --- the functions behind them ------------------------------------------------------------


def test_load_json_must_be_an_object(tmp_path):
    (tmp_path / "a.json").write_text("[1, 2]")
    with pytest.raises(CliError, match="JSON object"):
        load_json_options(tmp_path / "a.json")
    (tmp_path / "b.json").write_text("{nope")
    with pytest.raises(CliError, match="not valid JSON"):
        load_json_options(tmp_path / "b.json")


def test_collect_options_cli_wins(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"maxPoints": 9, "site": "A", "noSubmit": True}))
    ns = cli_main.submit_parser().parse_args(["--loadJson", str(tmp_path / "c.json"), "--site", "B"])
    opts = collect_options(ns)
    assert opts["maxPoints"] == 9 and opts["site"] == "B" and opts["noSubmit"] is True


def test_segment_spec_and_list_of_spaces_are_read(tmp_path):
    (tmp_path / "segs.json").write_text(
        json.dumps([{"name": "photons", "files": ["a.tar"]}, {"name": "electrons", "files": ["b.tar"]}])
    )
    (tmp_path / "space.json").write_text(
        json.dumps(
            [
                {
                    "model_id": 0,
                    "search_space": {"lr": {"method": "uniform", "dimension": {"low": 0, "high": 1}}},
                },
                {
                    "model_id": 1,
                    "search_space": {"lr": {"method": "uniform", "dimension": {"low": 0, "high": 2}}},
                },
            ]
        )
    )
    spec = build_spec(
        {
            "evaluationExec": "python t.py %SEGMENT_NAME",
            "segmentSpecFile": "segs.json",
            "searchSpaceFile": "space.json",
        },
        base=tmp_path,
    )
    assert [s.name for s in spec.segments] == ["photons", "electrons"]
    assert spec.segment_spaces()[1].params["lr"].high == 2


def test_optimizer_options_and_directions_from_strings(tmp_path):
    spec = build_spec(
        {
            "evaluationExec": "x",
            "searchSpace": None,
            "steeringExec": "s %IN %OUT",
            "optimizerOptions": '{"seed": 3}',
            "directions": "minimize,maximize",
            "checkPointInterval": "30s",
        },
        base=tmp_path,
    )
    assert spec.optimizerOptions == {"seed": 3}
    assert spec.directions == ["minimize", "maximize"]
    assert spec.checkpoint_interval_seconds == 30
    with pytest.raises(CliError, match="--optimizerOptions"):
        build_spec({"evaluationExec": "x", "steeringExec": "s", "optimizerOptions": "{seed"}, base=tmp_path)


def test_training_ds_directory_glob_list_url(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    for n in ("b.root", "a.root", ".hidden"):
        (d / n).write_text("x")
    warnings: list[str] = []
    assert resolve_training_ds("data", tmp_path, warnings.append) == [str(d / "a.root"), str(d / "b.root")]
    assert resolve_training_ds("data/a*.root", tmp_path, warnings.append) == [str(d / "a.root")]
    got = resolve_training_ds(
        "data/b.root, root://eos.cern.ch//x.root,user.alice.ds", tmp_path, warnings.append
    )
    assert got == [str(d / "b.root"), "root://eos.cern.ch//x.root", "user.alice.ds"]
    assert len(warnings) == 1 and "user.alice.ds" in warnings[0]
    with pytest.raises(CliError, match="matches no file"):
        resolve_training_ds("data/*.csv", tmp_path, warnings.append)


def test_passthrough_without_the_extra_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(cli_main.PASSTHROUGH, "server", ("phpo.no_such_module_here", "server"))
    assert cli_main.main(["server", "--help"]) == 2
    assert "install phpo[server]" in capsys.readouterr().err
