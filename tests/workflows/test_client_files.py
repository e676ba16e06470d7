"""Reading definition files and --param values on the client side (no server)."""

from __future__ import annotations

import pytest
from phpo.client import InvalidInput
from phpo.client.workflows import load_definition, parse_param


def test_yaml_and_json_definitions_and_file_inlining(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "inner.yaml").write_text("name: inner\nnodes:\n  - {name: a, kind: job, exec: run}\n")
    (tmp_path / "main.yaml").write_text(
        "name: main\nnodes:\n"
        "  - {name: s, kind: workflow, file: sub/inner.yaml}\n"
        "  - name: l\n    kind: loop\n    max_iterations: 2\n    while: false\n"
        "    nodes: [{name: t, kind: workflow, file: sub/inner.yaml}]\n"
    )
    d = load_definition(tmp_path / "main.yaml")
    assert d["nodes"][0]["workflow"]["name"] == "inner" and "file" not in d["nodes"][0]
    assert d["nodes"][1]["nodes"][0]["workflow"]["nodes"][0]["name"] == "a"
    (tmp_path / "w.json").write_text('{"name": "j", "nodes": []}')
    assert load_definition(tmp_path / "w.json")["name"] == "j"


def test_a_file_including_itself_is_refused(tmp_path):
    (tmp_path / "loop.yaml").write_text("name: x\nnodes:\n  - {name: s, kind: workflow, file: loop.yaml}\n")
    with pytest.raises(InvalidInput, match="includes itself"):
        load_definition(tmp_path / "loop.yaml")


def test_a_definition_must_be_a_mapping(tmp_path):
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(InvalidInput, match="mapping"):
        load_definition(tmp_path / "list.yaml")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("n=3", ("n", 3)),
        ("lr=0.5", ("lr", 0.5)),
        ("seeds=[1, 2]", ("seeds", [1, 2])),
        ("flag=true", ("flag", True)),
        ("name=abc", ("name", "abc")),
        ("empty=", ("empty", "")),
        ("expr=a: b: c", ("expr", "a: b: c")),
        ("python=/usr/bin/python3", ("python", "/usr/bin/python3")),
    ],
)
def test_params_from_the_command_line(text, expected):
    assert parse_param(text) == expected


def test_a_param_without_equals_is_refused():
    with pytest.raises(InvalidInput, match="KEY=VALUE"):
        parse_param("n")
