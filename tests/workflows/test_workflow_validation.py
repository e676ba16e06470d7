"""Definitions are checked at submit: each mistake is a 422 whose message names the node (and the
field), and nothing is stored — no workflow, no task. Runs against a real server; no agent is
needed since nothing may start."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import new_user
from .wf_helpers import PY, User, hpo, job

pytestmark = pytest.mark.slow


def base() -> dict[str, Any]:
    return {
        "name": "checked",
        "params": {"threshold": 0.5, "seeds": [1, 2]},
        "nodes": [
            hpo("search"),
            job("train", inputs={"x": "${{ nodes.search.best.params.x }}"}),
        ],
    }


def with_nodes(*nodes: dict[str, Any]) -> dict[str, Any]:
    d = base()
    d["nodes"].extend(nodes)
    return d


with_node = with_nodes


def edit(fn) -> dict[str, Any]:
    d = base()
    fn(d)
    return d


def _set(d: dict, path: str, value: Any) -> None:
    *head, last = path.split(".")
    for k in head:
        d = d[int(k)] if isinstance(d, list) else d[k]
    d[last] = value


CASES = [
    # (id, definition, params overrides, node named in the message, words in the message, field prefix)
    (
        "unknown-kind",
        with_node({"name": "deploy", "kind": "deploy", "exec": "x"}),
        {},
        "deploy",
        ["unknown kind 'deploy'", "hpo, job, workflow, loop"],
        "nodes.deploy.kind",
    ),
    (
        "unknown-field",
        with_node(job("tidy", retries=3)),
        {},
        "tidy",
        ["retries", "unknown field"],
        "nodes.tidy.retries",
    ),
    (
        "cycle-after",
        edit(lambda d: d["nodes"][0].update(after=["train"])),
        {},
        "search",
        ["dependency cycle search -> train -> search", "only a loop"],
        "nodes.search.after",
    ),
    (
        "cycle-reference",
        with_nodes(job("c", inputs={"v": "${{ nodes.d.outputs.v }}"}), job("d", after=["c"])),
        {},
        "c",
        ["dependency cycle", "c -> d -> c"],
        "nodes.",
    ),
    (
        "unknown-node-reference",
        edit(lambda d: _set(d, "nodes.1.inputs.x", "${{ nodes.serch.best.params.x }}")),
        {},
        "train",
        ["unknown node 'serch'"],
        "nodes.train.inputs.x",
    ),
    (
        "unknown-param",
        with_node(job("gate", when="${{ params.treshold > 0 }}")),
        {},
        "gate",
        ["unknown parameter 'treshold'"],
        "nodes.gate.when",
    ),
    (
        "bad-expression",
        with_node(job("odd", inputs={"v": "${{ nodes.train.outputs. }}"})),
        {},
        "odd",
        ["not a valid expression"],
        "nodes.odd.inputs.v",
    ),
    (
        "unclosed-expression",
        with_node(job("open", exec="${{ params.threshold")),
        {},
        "open",
        ["without a closing"],
        "nodes.open.exec",
    ),
    (
        "forbidden-call",
        with_node(job("evil", inputs={"v": "${{ nodes.train.outputs.keys() }}"})),
        {},
        "evil",
        ["cannot call"],
        "nodes.evil.inputs.v",
    ),
    (
        "dunder",
        with_node(job("evil2", inputs={"v": "${{ params.seeds.__class__ }}"})),
        {},
        "evil2",
        ["'_'"],
        "nodes.evil2.inputs.v",
    ),
    (
        "invalid-task-spec",
        edit(lambda d: _set(d, "nodes.0.spec.maxPoints", 0)),
        {},
        "search",
        ["maxPoints", "greater than or equal to 1"],
        "nodes.search.spec.maxPoints",
    ),
    (
        "task-spec-unknown-option",
        edit(lambda d: _set(d, "nodes.0.spec.maxPoint", 3)),
        {},
        "search",
        ["maxPoint", "unknown field"],
        "nodes.search.spec.maxPoint",
    ),
    (
        "unknown-optimizer",
        edit(lambda d: _set(d, "nodes.0.spec.optimizer", "optuna.nope")),
        {},
        "search",
        ["optuna.nope"],
        "nodes.search.spec",
    ),
    (
        "task-spec-from-params",
        with_node(hpo("small", max_points="${{ params.threshold }}")),
        {},
        "small",
        ["maxPoints"],
        "nodes.small.spec.maxPoints",
    ),
    (
        "after-unknown",
        with_node(job("late", after=["nothere"])),
        {},
        "late",
        ["unknown node 'nothere'"],
        "nodes.late.after",
    ),
    ("duplicate-name", with_node(job("train")), {}, "train", ["used twice"], "nodes.train.name"),
    ("bad-name", with_node(job("my-node")), {}, "my-node", ["letters, digits"], "nodes.my-node.name"),
    (
        "item-without-for-each",
        with_node(job("lonely", inputs={"s": "${{ item }}"})),
        {},
        "lonely",
        ["for_each"],
        "nodes.lonely.inputs.s",
    ),
    (
        "loop-outside-loop",
        with_node(job("where", inputs={"i": "${{ loop.iteration }}"})),
        {},
        "where",
        ["inside a loop"],
        "nodes.where.inputs.i",
    ),
    (
        "into-a-loop-body",
        with_nodes(
            {"name": "rounds", "kind": "loop", "max_iterations": 2, "while": False, "nodes": [job("inner")]},
            job("outside", inputs={"v": "${{ nodes.inner.outputs.v }}"}),
        ),
        {},
        "outside",
        ["inside loop 'rounds'", "nodes.rounds.last.inner"],
        "nodes.outside.inputs.v",
    ),
    (
        "max-iterations",
        with_node(
            {"name": "spin", "kind": "loop", "max_iterations": 5000, "while": True, "nodes": [job("turn")]}
        ),
        {},
        "spin",
        ["1 to 1000"],
        "nodes.spin.max_iterations",
    ),
    (
        "max-iterations-param",
        with_node(
            {
                "name": "spin2",
                "kind": "loop",
                "max_iterations": "${{ params.threshold }}",
                "while": True,
                "nodes": [job("turn2")],
            }
        ),
        {},
        "spin2",
        ["whole number"],
        "nodes.spin2.max_iterations",
    ),
    (
        "for-each-on-loop",
        with_node(
            {
                "name": "fl",
                "kind": "loop",
                "max_iterations": 2,
                "while": True,
                "for_each": [1],
                "nodes": [job("t3")],
            }
        ),
        {},
        "fl",
        ["for_each"],
        "nodes.fl.for_each",
    ),
    (
        "sub-workflow-inner",
        with_node(
            {
                "name": "sub",
                "kind": "workflow",
                "workflow": {
                    "name": "inner",
                    "nodes": [job("deep", inputs={"v": "${{ nodes.nowhere.outputs.v }}"})],
                },
            }
        ),
        {},
        "sub.deep",
        ["unknown node 'nowhere'"],
        "nodes.sub.deep.inputs.v",
    ),
    (
        "sub-workflow-param",
        with_node(
            {
                "name": "sub2",
                "kind": "workflow",
                "params": {"zz": 1},
                "workflow": {"name": "inner", "nodes": [job("d2")]},
            }
        ),
        {},
        "sub2",
        ["unknown parameter 'zz'"],
        "nodes.sub2.params",
    ),
    (
        "file-not-inlined",
        with_node({"name": "sub3", "kind": "workflow", "file": "other.yaml"}),
        {},
        "sub3",
        ["inlined"],
        "nodes.sub3.file",
    ),
    ("unknown-override", base(), {"thresold": 1}, None, ["unknown parameter 'thresold'"], "params.thresold"),
    ("no-nodes", {"name": "empty", "nodes": []}, {}, None, ["nodes"], "definition.nodes"),
    (
        "outputs-unknown-node",
        base() | {"outputs": {"r": "${{ nodes.trian.outputs }}"}},
        {},
        None,
        ["outputs.r", "unknown node 'trian'"],
        "outputs.r",
    ),
]


@pytest.fixture(scope="module")
def checker(server) -> User:
    """One user for all the refused submits (a token costs a process start); it never has anything."""
    return new_user(server, "checker")


@pytest.mark.parametrize(
    "definition, params, node, words, field", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_each_mistake_is_a_422_naming_the_node_and_nothing_is_stored(
    checker, definition, params, node, words, field
):
    with checker.http() as h:
        r = h.post("/workflows", json={"definition": definition, "params": params})
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["code"] == "validation_error"
        if node is not None:
            assert f"node '{node}'" in body["message"], body
        for w in words:
            assert w in body["message"], body
        assert body["field"] and body["field"].startswith(field), body
        # nothing stored
        assert h.get("/workflows").json()["total"] == 0
        assert h.get("/tasks").json()["total"] == 0


def test_a_valid_definition_is_accepted_and_the_examples_too(user, payloads):
    with user.http() as h:
        r = h.post("/workflows", json={"definition": base(), "params": {"threshold": 0.1}})
        assert r.status_code == 201, r.text
        wf = r.json()
        assert wf["params"] == {"threshold": 0.1, "seeds": [1, 2]}
        assert [n["path"] for n in wf["nodes"]] == ["search", "train"]
        h.post(f"/workflows/{wf['id']}/cancel")


def test_client_refuses_unreadable_files_before_sending(user, tmp_path):
    from phpo.client import InvalidInput

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nnodes: [\n")
    with user.client() as c:
        with pytest.raises(InvalidInput, match="not valid YAML"):
            c.submit_workflow(bad)
        with pytest.raises(InvalidInput, match="cannot read"):
            c.submit_workflow(tmp_path / "missing.yaml")


def test_cli_reports_the_servers_message(user, tmp_path):
    from conftest import run_phpo

    f = tmp_path / "wf.yaml"
    f.write_text(
        f"name: cli\nnodes:\n  - name: go\n    kind: job\n    exec: {PY} x.py\n"
        "    inputs: {v: '${{ nodes.gone.outputs }}'}\n"
    )
    p = run_phpo("workflow", "submit", str(f), env=user.env, check=False)
    assert p.returncode == 2  # a refused definition is a usage error (phpo --help: exit codes)
    assert "node 'go'" in p.stderr and "unknown node 'gone'" in p.stderr
    p = run_phpo("workflow", "submit", str(f), "--param", "nope=1", env=user.env, check=False)
    assert p.returncode == 2 and "unknown parameter 'nope'" in p.stderr
