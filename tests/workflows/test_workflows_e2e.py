"""Workflows end to end: a real server, a real agent running real payloads, the real CLI.

The examples run exactly as a user runs them (``phpo workflow submit FILE --wait``), with small
budgets passed as ``--param``; the other tests submit small definitions through the client.
"""

from __future__ import annotations

import json
import time

import pytest
from conftest import run_phpo
from phpo.client import Conflict, NotFound

from .conftest import new_user
from .wf_helpers import EXAMPLES, PY, by_path, hpo, job, tasks_of

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------- the examples


def test_hpo_then_train_example_runs_to_completion(user, agent):
    p = run_phpo(
        "workflow",
        "submit",
        str(EXAMPLES / "hpo_then_train.yaml"),
        "--param",
        f"python={PY}",
        "--param",
        "max_points=4",
        "--param",
        "seeds=[3, 4, 5]",
        "--json",
        env=user.env,
    )
    wid = json.loads(p.stdout)["id"]
    w = run_phpo(
        "workflow", "wait", str(wid), "--json", "--poll", "0.3", env=user.env, check=False, timeout=120
    )
    assert w.returncode == 0, w.stdout + w.stderr
    wf = user.get(wid)
    assert wf.state.value == "succeeded", wf.message
    nodes = by_path(wf)
    search = nodes["search"]
    assert search.state.value == "done" and search.task_id is not None
    assert search.progress is None and search.results["best"]["params"]["epochs"] == 5
    # one training per seed, each with the best point of the search and the longer budget
    train = nodes["train"]
    assert train.fan_out and [c.item for c in train.children] == [3, 4, 5]
    for c in train.children:
        assert c.state.value == "done" and c.task_id not in (None, search.task_id)
        assert c.results["outputs"]["epochs"] == 50 and c.results["outputs"]["seed"] == c.item
    best = search.results["best"]
    assert wf.outputs["best_params"] == best["params"]
    assert wf.outputs["trained_losses"] == [c.results["outputs"]["loss"] for c in train.children]
    assert wf.outputs["improved"] is True  # 50 epochs beat the search's 5
    # the show command draws the tree with the fan-out instances
    show = run_phpo("workflow", "show", str(wid), env=user.env)
    assert "[2] item=5" in show.stdout and "succeeded" in show.stdout


def test_active_learning_example_loops_until_its_condition(user, agent):
    # target 0.25: the rounds' errors are 0.7, 0.3, 0.2 -> the third round stops the loop
    p = run_phpo(
        "workflow",
        "submit",
        str(EXAMPLES / "active_learning.yaml"),
        "--param",
        f"python={PY}",
        "--param",
        "target=0.25",
        "--wait",
        env=user.env,
        check=False,
        timeout=150,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "iteration 3" in p.stdout and "iteration 4" not in p.stdout
    with user.client() as c:
        wf = c.workflow(c.workflows()[0].id)
    assert wf.state.value == "succeeded"
    loop = by_path(wf)["rounds"]
    assert loop.iteration == 3 and loop.results["stopped"] == "condition"
    assert wf.outputs["errors"] == pytest.approx([0.7, 0.3, 0.2])
    assert wf.outputs["rounds"] == 3 and wf.outputs["best_x"] == pytest.approx(1.5)
    # each round searched the window the previous round proposed, and every round stays visible
    nodes = by_path(wf)
    assert [c.iteration for c in loop.children] == [1, 1, 2, 2, 3, 3]
    r2 = nodes["rounds#2.search"]
    assert r2.results["best"]["params"]["x"] == pytest.approx(1.0)
    assert nodes["rounds#2.evaluate"].results["outputs"]["x"] == pytest.approx(1.0)
    assert len({n.task_id for n in loop.children}) == 6


# --------------------------------------------------------------------------- conditions, loops, failures


def test_a_false_condition_skips_its_branch_and_a_true_one_runs(user, agent, payloads):
    definition = {
        "name": "branches",
        "params": {"threshold": 5},
        "nodes": [
            job("measure", inputs={"value": 3}),
            job("big", when="${{ nodes.measure.outputs.value > params.threshold }}", inputs={"value": 1}),
            job("after_big", inputs={"value": "${{ nodes.big.outputs.double }}"}),
            job(
                "small",
                when="nodes.measure.outputs.value <= params.threshold",
                inputs={"value": "${{ nodes.measure.outputs.double }}"},
            ),
            job("join", after=["after_big", "small"], trigger="none_failed", inputs={"value": 1}),
        ],
    }
    wf = user.wait(user.submit(definition, payloads).id, agent_log=agent)
    nodes = by_path(wf)
    assert wf.state.value == "succeeded", wf.message
    assert nodes["big"].state.value == "skipped" and nodes["big"].task_id is None
    assert "condition is false" in nodes["big"].message
    assert nodes["after_big"].state.value == "skipped" and nodes["after_big"].task_id is None
    assert nodes["small"].state.value == "done" and nodes["small"].results["outputs"]["value"] == 6
    assert nodes["join"].state.value == "done"
    # only the nodes that ran made tasks
    assert sorted(t["id"] for t in tasks_of(user)) == sorted(
        n.task_id for n in nodes.values() if n.task_id is not None
    )
    assert len(tasks_of(user)) == 3


def test_loops_stop_at_their_condition_and_at_their_maximum(user, agent, payloads):
    step = job(
        "step",
        inputs={
            "value": "${{ loop.iteration }}",
            "prev": "${{ loop.previous.step.outputs.value if loop.previous else 0 }}",
        },
    )
    definition = {
        "name": "loops",
        "nodes": [
            {
                "name": "until_three",
                "kind": "loop",
                "max_iterations": 10,
                "while": "${{ nodes.step.outputs.value < 3 }}",
                "nodes": [step],
            },
            {
                "name": "forever",
                "kind": "loop",
                "max_iterations": 2,
                "while": True,
                "nodes": [job("tick", inputs={"value": "${{ loop.iteration }}"})],
            },
            job(
                "report",
                inputs={
                    "value": "${{ nodes.until_three.last.step.outputs.value }}",
                    "all": "${{ [it.step.outputs.value for it in nodes.until_three.results] }}",
                    "ticks": "${{ nodes.forever.iterations }}",
                },
            ),
        ],
    }
    wf = user.wait(user.submit(definition, payloads).id, agent_log=agent)
    assert wf.state.value == "succeeded", wf.message
    nodes = by_path(wf)
    cond, cap = nodes["until_three"], nodes["forever"]
    assert cond.iteration == 3 and cond.results["stopped"] == "condition"
    assert cap.iteration == 2 and cap.results["stopped"] == "max_iterations"
    # every iteration's node is kept, numbered, and saw the previous iteration's outputs
    steps = [c for c in cond.children if c.name == "step"]
    assert [s.iteration for s in steps] == [1, 2, 3]
    assert [s.results["outputs"]["prev"] for s in steps] == [0, 1, 2]
    assert [c.path for c in cap.children] == ["forever#1.tick", "forever#2.tick"]
    assert nodes["report"].results["outputs"] == {
        "value": 3,
        "all": [1, 2, 3],
        "ticks": 2,
        "double": 6,
        "loss": 3.0,
    }


def test_a_failing_node_fails_its_dependants_and_the_workflow(user, agent, payloads):
    definition = {
        "name": "failing",
        "nodes": [
            job("broken", inputs={"fail": True}),
            job("child", inputs={"value": "${{ nodes.broken.outputs.value }}"}),
            job("grandchild", after=["child"]),
            job("independent", inputs={"value": 7}),
            job(
                "cleanup",
                after=["broken"],
                trigger="all_done",
                inputs={"status": "${{ nodes.broken.status }}"},
            ),
        ],
    }
    wf = user.wait(user.submit(definition, payloads).id, agent_log=agent)
    nodes = by_path(wf)
    assert wf.state.value == "failed"
    assert "'broken'" in wf.message
    assert nodes["broken"].state.value == "failed" and "job failed" in nodes["broken"].message
    assert "failing on purpose" in nodes["broken"].message  # the payload's own stderr
    assert nodes["child"].state.value == "failed" and nodes["child"].task_id is None
    assert nodes["child"].message == "dependency 'broken' failed"
    assert (
        nodes["grandchild"].state.value == "failed"
        and nodes["grandchild"].message == "dependency 'child' failed"
    )
    assert nodes["independent"].state.value == "done"
    assert nodes["cleanup"].state.value == "done"
    assert nodes["cleanup"].results["outputs"]["status"] == "failed"


def test_sub_workflow_runs_with_params_and_hands_back_outputs(user, agent, payloads):
    inner = {
        "name": "inner",
        "params": {"v": 1},
        "nodes": [job("twice", inputs={"value": "${{ params.v }}"})],
        "outputs": {"result": "${{ nodes.twice.outputs.double }}"},
    }
    definition = {
        "name": "outer",
        "nodes": [
            job("first", inputs={"value": 4}),
            {
                "name": "sub",
                "kind": "workflow",
                "workflow": inner,
                "params": {"v": "${{ nodes.first.outputs.double }}"},
            },
            job("last", inputs={"value": "${{ nodes.sub.outputs.result }}"}),
        ],
        "outputs": {"final": "${{ nodes.last.outputs.double }}"},
    }
    wf = user.wait(user.submit(definition, payloads).id, agent_log=agent)
    assert wf.state.value == "succeeded", wf.message
    assert wf.outputs == {"final": 32}
    sub = by_path(wf)["sub"]
    assert sub.workflow_id is not None and sub.results["outputs"] == {"result": 16}
    assert [c.path for c in sub.children] == ["twice"]
    # a sub-workflow shows inside its parent, not in the user's list
    with user.client() as c:
        assert [w.id for w in c.workflows()] == [wf.id]
        assert c.workflow(sub.workflow_id).parent_node_id == sub.id


def test_cancel_cancels_every_running_node_and_its_task(user, agent, payloads):
    definition = {
        "name": "long",
        "nodes": [
            job("slow", inputs={"sleep": 60}),
            hpo("search", max_points=50, sleep=30),
            job("later", after=["slow"]),
        ],
    }
    wid = user.submit(definition, payloads).id
    with user.client() as c:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            wf = c.workflow(wid)
            if all(n.state.value == "running" for n in wf.nodes if n.name in ("slow", "search")):
                break
            time.sleep(0.2)
        out = run_phpo("workflow", "cancel", str(wid), env=user.env)
        assert "cancelled" in out.stdout
        wf = c.workflow(wid)
        assert wf.state.value == "cancelled"
        assert {n.name: n.state.value for n in wf.nodes} == {
            "slow": "cancelled",
            "search": "cancelled",
            "later": "cancelled",
        }
        for n in wf.nodes:
            if n.task_id is not None:
                assert c.task(n.task_id).state.value == "cancelled"
        with pytest.raises(Conflict):
            c.cancel_workflow(wid)
    w = run_phpo("workflow", "wait", str(wid), "--quiet", env=user.env, check=False)
    assert w.returncode == 1


def test_other_users_see_nothing(user, server, payloads):
    wid = user.submit({"name": "mine", "nodes": [job("a", inputs={"sleep": 30})]}, payloads).id
    other = new_user(server, "mallory")
    with other.client() as c:
        with pytest.raises(NotFound):
            c.workflow(wid)
        with pytest.raises(NotFound):
            c.cancel_workflow(wid)
        assert [w.id for w in c.workflows()] == []
    with user.client() as c:
        assert [w.id for w in c.workflows()] == [wid]
        c.cancel_workflow(wid)
    lst = run_phpo("workflow", "list", "--json", env=user.env)
    assert [w["state"] for w in json.loads(lst.stdout)] == ["cancelled"]


def test_values_known_only_at_run_time_fail_their_node_with_a_clear_message(user, agent, payloads):
    definition = {
        "name": "late-errors",
        "nodes": [
            job("a", inputs={"value": -1, "label": "x"}),
            hpo("budget", max_points="${{ nodes.a.outputs.value }}"),
            job("many", for_each="${{ nodes.a.outputs.label }}", inputs={"v": "${{ item }}"}),
            job("missing", inputs={"v": "${{ nodes.a.outputs.nope }}"}),
            job("fine", inputs={"v": "${{ nodes.a.outputs.double }}"}),
        ],
    }
    wf = user.wait(user.submit(definition, payloads).id, agent_log=agent)
    nodes = by_path(wf)
    assert wf.state.value == "failed"
    assert nodes["budget"].state.value == "failed" and nodes["budget"].task_id is None
    assert "maxPoints" in nodes["budget"].message and "greater than or equal to 1" in nodes["budget"].message
    assert nodes["many"].state.value == "failed" and "for_each must give a list" in nodes["many"].message
    assert nodes["missing"].state.value == "failed"
    assert (
        "'nope' is not in nodes.a.outputs" in nodes["missing"].message and "label" in nodes["missing"].message
    )
    assert nodes["fine"].state.value == "done" and nodes["fine"].results["outputs"]["v"] == -2


def test_an_hpo_node_whose_points_all_failed_fails_as_phpo_wait_says(user, agent, payloads):
    """The workflow engine and the CLI share one meaning of "failed": a task without a single
    evaluated point failed; its hpo node fails, and both waits exit 1."""
    search = {
        "name": "search",
        "kind": "hpo",
        "spec": {
            "evaluationExec": f"{PY} job.py",
            "optimizer": "grid",
            "maxPoints": 2,
            "maxAttempts": 1,
            "searchSpace": {
                "x": {"type": "int", "low": 0, "high": 1},
                "fail": {"type": "fixed", "value": True},
            },
        },
    }
    wid = user.submit({"name": "all-failed", "nodes": [search, job("after", after=["search"])]}, payloads).id
    w = run_phpo(
        "workflow", "wait", str(wid), "--json", "--poll", "0.3", env=user.env, check=False, timeout=120
    )
    assert w.returncode == 1, w.stdout + w.stderr
    nodes = by_path(user.get(wid))
    assert nodes["search"].state.value == "failed" and "no point was evaluated" in nodes["search"].message
    assert nodes["after"].state.value == "failed"
    t = run_phpo("wait", str(nodes["search"].task_id), "--json", env=user.env, check=False)
    assert t.returncode == 1 and json.loads(t.stdout)["state"] == "failed"
    assert run_phpo("best", str(nodes["search"].task_id), env=user.env, check=False).returncode == 1
