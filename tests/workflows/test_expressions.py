"""The ``${{ }}`` resolver, the definition analysis, and the published JSON Schema (no processes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from phpo.schemas.workflows import WorkflowSpec, workflow_json_schema
from phpo.server.workflows.expressions import (
    ExpressionError,
    evaluate,
    references,
    render,
    truth,
)
from phpo.server.workflows.validation import (
    DefinitionError,
    analyse,
    check_definition,
    merge_params,
    parse_definition,
)

ROOT = Path(__file__).resolve().parents[2]

NAMES = {
    "params": {"threshold": 0.5, "regions": ["eu", "us"], "n": 3, "name": "run"},
    "nodes": {
        "search": {"status": "done", "best": {"params": {"lr": 0.01, "layers": 2}, "loss": 0.25}},
        "train": {
            "status": "done",
            "results": [{"outputs": {"auc": 0.9}}, {"outputs": {"auc": 0.7}}],
            "items": ["eu", "us"],
        },
        "skip": {"status": "skipped", "message": None},
    },
    "item": "eu",
}


# --------------------------------------------------------------------------- values and types


@pytest.mark.parametrize(
    "template, expected",
    [
        ("${{ nodes.search.best.params.lr }}", 0.01),
        ("${{nodes.search.best.params}}", {"lr": 0.01, "layers": 2}),
        ("  ${{ params.n }}  ", 3),  # a whole-string expression keeps its type, around spaces too
        ("${{ params.regions }}", ["eu", "us"]),
        ("${{ nodes.skip.message }}", None),
        ("${{ params.threshold > 0.4 }}", True),
        ("lr=${{ nodes.search.best.params.lr }}", "lr=0.01"),
        ("${{ params.name }}-${{ item }}", "run-eu"),
        ("r=${{ params.regions }} ok=${{ true }} none=${{ null }}", 'r=["eu", "us"] ok=true none=null'),
        ("${{ [r.outputs.auc for r in nodes.train.results] }}", [0.9, 0.7]),
        ("${{ max(r.outputs.auc for r in nodes.train.results) }}", 0.9),
        ("${{ sum([1, 2, params.n]) / 2 }}", 3.0),
        ("${{ nodes.train.results[1].outputs.auc }}", 0.7),
        ("${{ nodes['search']['best']['loss'] * 4 }}", 1.0),
        ("${{ nodes.search.best.loss if nodes.search.status == 'done' else 1.0 }}", 0.25),
        ("${{ 'eu' in params.regions and not false }}", True),
        ("${{ len(nodes.train.items) }}", 2),
        ("no expression here", "no expression here"),
    ],
)
def test_render(template, expected):
    assert render(template, NAMES) == expected


def test_render_walks_dicts_and_lists_and_keeps_other_values():
    value = {"a": ["${{ params.n }}", {"b": "${{ item }}"}, 4, None, True], "c": 0.0}
    assert render(value, NAMES) == {"a": [3, {"b": "eu"}, 4, None, True], "c": 0.0}


def test_keys_named_like_dict_methods_are_plain_keys():
    names = {"nodes": {"x": {"items": [1, 2], "keys": "k", "values": 3, "get": None}}}
    assert evaluate("nodes.x.items", names) == [1, 2]
    assert evaluate("nodes.x.keys + ''", names) == "k"
    assert evaluate("nodes.x.values", names) == 3


@pytest.mark.parametrize(
    "expr, words",
    [
        ("nodes.search.best.loos", ["'loos' is not in nodes.search.best", "it has: loss, params"]),
        ("nodes.nothere.status", ["'nothere' is not in nodes"]),
        ("nodes.train.results[5]", ["index 5 is out of range", "length 2"]),
        ("params.regions.eu", ["params.regions is a list"]),
        ("nodes.skip.message.text", ["nodes.skip.message is null"]),
        ("1 / (params.n - 3)", ["ZeroDivisionError"]),
        ("params.threshold.__class__", ["'_'"]),
        ("params.name.upper()", ["cannot call 'params.name.upper'"]),
        ("open('/etc/passwd')", ["cannot call 'open'"]),
        ("__import__('os')", ["cannot call '__import__'"]),
        ("lambda: 1", ["Lambda is not allowed"]),
        ("nodes.search.best.", ["not a valid expression"]),
        ("", ["empty expression"]),
    ],
)
def test_evaluation_errors_quote_the_expression_and_say_what_exists(expr, words):
    with pytest.raises(ExpressionError) as e:
        evaluate(expr, NAMES)
    for w in words:
        assert w in str(e.value)


def test_unclosed_expression_is_an_error():
    with pytest.raises(ExpressionError, match="without a closing"):
        render("x ${{ params.n ", NAMES)


def test_conditions_bare_or_wrapped():
    assert truth("nodes.search.best.loss < params.threshold", NAMES) is True
    assert truth("${{ nodes.search.best.loss > params.threshold }}", NAMES) is False
    assert truth(None, NAMES) is True and truth(False, NAMES) is False
    with pytest.raises(ExpressionError, match="one expression"):
        truth("a ${{ true }} b", NAMES)


def test_references_name_nodes_params_and_roots():
    r = references(
        "nodes.a.best.loss < params.t and item in [r.x for r in nodes['b'].results] or loop.iteration"
    )
    assert r.nodes == {"a", "b"} and r.params == {"t"} and r.roots == {"nodes", "params", "item", "loop"}
    with pytest.raises(ExpressionError, match="unknown name 'foo'"):
        references("foo + 1")
    with pytest.raises(ExpressionError, match="not 'nodes' alone"):
        references("len(nodes)")


def test_the_evaluator_never_mutates_its_function_table():
    from phpo.server.workflows import expressions as we

    before = dict(we.FUNCTIONS)
    evaluate("len([1])", {})
    assert before == we.FUNCTIONS


# --------------------------------------------------------------------------- analysis


def _spec(nodes, **kw):
    return parse_definition({"name": "t", "nodes": nodes, **kw})


def _job(name, **kw):
    return {"name": name, "kind": "job", "exec": "run", **kw}


def test_dependencies_come_from_after_and_from_references():
    an = analyse(
        _spec(
            [
                _job("a"),
                _job("b", inputs={"v": "${{ nodes.a.outputs.v }}"}),
                _job("c", after=["a", "b"]),
                {
                    "name": "l",
                    "kind": "loop",
                    "max_iterations": 3,
                    "while": "nodes.inner.outputs.go and nodes.c.status",
                    "nodes": [
                        _job("inner", inputs={"v": "${{ nodes.b.outputs.v }} ${{ loop.iteration }}"}),
                        _job("inner2", inputs={"v": "${{ nodes.inner.outputs.v }}"}),
                    ],
                },
            ]
        )
    )
    assert an.nodes["b"].deps == {"a"} and an.nodes["c"].deps == {"a", "b"}
    # a body node reading an outer node makes the loop wait for it; so does the while
    assert an.nodes["l"].deps == {"b", "c"}
    assert an.nodes["inner2"].deps == {"inner"} and an.nodes["inner"].deps == set()
    assert an.bodies == {"l": ["inner", "inner2"]} and an.top == ["a", "b", "c", "l"]


def test_a_self_reference_and_a_loop_reading_itself_are_refused():
    with pytest.raises(DefinitionError, match="its own results"):
        analyse(_spec([_job("a", inputs={"v": "${{ nodes.a.outputs }}"})]))
    with pytest.raises(DefinitionError, match="loop.iteration"):
        analyse(
            _spec(
                [
                    {
                        "name": "l",
                        "kind": "loop",
                        "max_iterations": 2,
                        "while": True,
                        "nodes": [_job("x", inputs={"v": "${{ nodes.l.iterations }}"})],
                    }
                ]
            )
        )


def test_params_overrides_must_be_declared():
    spec = _spec([_job("a")], params={"k": 1})
    assert merge_params(spec, {"k": 2}) == {"k": 2}
    with pytest.raises(DefinitionError, match="unknown parameter 'z'"):
        merge_params(spec, {"z": 1})


# --------------------------------------------------------------------------- published schema and examples


def test_the_published_json_schema_is_up_to_date():
    published = json.loads((ROOT / "docs" / "workflow-schema.json").read_text())
    assert published == workflow_json_schema(), (
        "docs/workflow-schema.json is stale: python -m phpo.schemas.workflows > docs/workflow-schema.json"
    )


@pytest.mark.parametrize("name", ["hpo_then_train.yaml", "active_learning.yaml"])
def test_examples_pass_every_submit_check(name):
    from phpo.server.workflows.engine import task_check

    raw = yaml.safe_load((ROOT / "examples" / "workflows" / name).read_text())
    spec = parse_definition(raw)
    assert isinstance(spec, WorkflowSpec)
    check_definition(spec, merge_params(spec, {}), task_check)


def test_the_json_schema_validates_the_examples():
    jsonschema = pytest.importorskip("jsonschema")
    schema = workflow_json_schema()
    for name in ("hpo_then_train.yaml", "active_learning.yaml"):
        jsonschema.validate(yaml.safe_load((ROOT / "examples" / "workflows" / name).read_text()), schema)
