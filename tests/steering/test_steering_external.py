"""The %IN / %OUT files of the upstream steering command (docs/compatibility.md, The steering command)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from phpo.schemas.points import Point
from phpo.schemas.search_space import parse_search_space
from phpo.schemas.upstream import substitute_placeholders
from phpo.steering.external import build_steering_input, parse_steering_output

RAW_SPACE = {
    "lr": {"method": "loguniform", "dimension": {"low": 1e-4, "high": 1e-1}},
    "layers": {"method": "uniformint", "dimension": {"low": 1, "high": 4}},
}
SPACE = parse_search_space(RAW_SPACE)


def _pt(i: int, params: dict, state: str, loss=None, segment_id: int = 0) -> Point:
    return Point(id=i, task_id=1, serial=i, segment_id=segment_id, params=params, state=state, loss=loss)


def test_input_lists_every_point_with_its_loss_and_the_users_own_space():
    points = [
        _pt(1, {"lr": 0.01, "layers": 2}, "evaluated", 0.31),
        _pt(2, {"lr": 0.02, "layers": 1}, "evaluated", 0.0),
        _pt(3, {"lr": 0.1, "layers": 3}, "leased"),
        _pt(4, {"lr": 0.05, "layers": 4}, "ready"),
        _pt(5, {"lr": 0.03, "layers": 4}, "failed"),
        _pt(6, {"lr": 0.04, "layers": 2}, "evaluated", [0.5, 1.5]),
    ]
    got = build_steering_input(points, RAW_SPACE)
    assert got == {
        "points": [
            [{"lr": 0.01, "layers": 2}, 0.31],
            [{"lr": 0.02, "layers": 1}, 0.0],  # 0.0 is a real loss, never "not evaluated"
            [{"lr": 0.1, "layers": 3}, None],
            [{"lr": 0.05, "layers": 4}, None],
            [{"lr": 0.03, "layers": 4}, 100000.0],  # failed: iDDS's 1e5, never null (= pending)
            [{"lr": 0.04, "layers": 2}, [0.5, 1.5]],
        ],
        "opt_space": RAW_SPACE,
    }
    assert got["opt_space"] is RAW_SPACE or got["opt_space"] == RAW_SPACE
    json.dumps(got)


def test_failed_points_get_the_penalty_loss_when_the_task_sets_one():
    points = [
        _pt(1, {"lr": 0.03, "layers": 4}, "failed"),
        _pt(2, {"lr": 0.01, "layers": 1}, "evaluated", 0.2),
    ]
    got = build_steering_input(points, RAW_SPACE, penalty_loss=1e6)
    assert got["points"] == [[{"lr": 0.03, "layers": 4}, 1e6], [{"lr": 0.01, "layers": 1}, 0.2]]


def test_input_accepts_plain_mappings():
    got = build_steering_input(
        [{"params": {"a": 1}, "loss": 0.0, "state": "evaluated"}, {"params": {"a": 2}}], {"a": [0, 3]}
    )
    assert got["points"] == [[{"a": 1}, 0.0], [{"a": 2}, None]]


def test_segmented_input_clones_one_space_or_keeps_the_list():
    points = [
        _pt(1, {"lr": 0.01, "layers": 2}, "evaluated", 0.3, segment_id=1),
        _pt(2, {"lr": 0.02, "layers": 1}, "ready", segment_id=0),
    ]
    got = build_steering_input(points, RAW_SPACE, segmented=True, n_segments=2)
    assert got["points"] == [[[1, {"lr": 0.01, "layers": 2}], 0.3], [[0, {"lr": 0.02, "layers": 1}], None]]
    assert got["opt_space"] == [
        {"model_id": 0, "search_space": RAW_SPACE},
        {"model_id": 1, "search_space": RAW_SPACE},
    ]
    listed = [{"model_id": 0, "search_space": RAW_SPACE}, {"model_id": 1, "search_space": {"x": [0, 1]}}]
    assert build_steering_input(points, listed, segmented=True)["opt_space"] == listed
    with pytest.raises(ValueError, match="n_segments"):
        build_steering_input(points, RAW_SPACE, segmented=True)


def test_a_task_without_a_search_space_gives_an_empty_object():
    assert build_steering_input([], None) == {"points": [], "opt_space": {}}


def test_output_points_are_checked_against_the_space():
    assert parse_steering_output([{"lr": 0.01, "layers": 2}], spaces=SPACE) == [{"lr": 0.01, "layers": 2}]
    assert parse_steering_output('[{"lr": 0.01, "layers": 2}]') == [{"lr": 0.01, "layers": 2}]
    with pytest.raises(
        ValueError, match=r"item 1: the point does not fit the search space: 'layers': 9 is outside \[1, 4\]"
    ):
        parse_steering_output([{"lr": 0.01, "layers": 2}, {"lr": 0.01, "layers": 9}], spaces=SPACE)
    with pytest.raises(ValueError, match=r"item 0: .*'lr' is missing"):
        parse_steering_output([{"layers": 2}], spaces=[SPACE])


def test_an_empty_list_is_valid_and_ends_the_search():
    assert parse_steering_output([]) == []
    assert parse_steering_output("[]", segmented=True, n_segments=3) == []


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ({"lr": 0.1}, "must be a JSON list of points, got dict"),
        (None, "got null"),
        ("not json", "not valid JSON"),
        ([{"lr": 0.1}, [1, {"lr": 0.1}]], r"item 1: a point must be a JSON object"),
        ([{"lr": 0.1}, 3], r"item 1: a point must be a JSON object .* got 3"),
    ],
)
def test_bad_output_is_named(obj, match):
    with pytest.raises(ValueError, match=match):
        parse_steering_output(obj)


def test_segmented_output():
    got = parse_steering_output(
        [[1, {"lr": 0.01, "layers": 2}], [0, {"lr": 0.1, "layers": 1}]],
        segmented=True,
        n_segments=2,
        spaces=[SPACE, None],
    )
    assert got == [(1, {"lr": 0.01, "layers": 2}), (0, {"lr": 0.1, "layers": 1})]


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ([{"lr": 0.1}], r"item 0: a segmented point must be \[segment_id, point\]"),
        (
            [[0, {"lr": 0.01, "layers": 2}], [2, {"lr": 0.1}]],
            r"item 1: segment id 2 is out of range \(0..1\)",
        ),
        ([[-1, {}]], "out of range"),
        ([["0", {}]], "item 0: the segment id must be an integer"),
        ([[True, {}]], "the segment id must be an integer"),
        ([[0, {"lr": 0.01}, 3]], r"must be \[segment_id, point\]"),
        ([[1, {"lr": 0.5, "layers": 2}]], r"item 0 \(segment 1\): the point does not fit"),
        ([[0, "x"]], r"item 0 \(segment 0\): a point must be a JSON object"),
    ],
)
def test_bad_segmented_output_is_named(obj, match):
    with pytest.raises(ValueError, match=match):
        parse_steering_output(obj, segmented=True, n_segments=2, spaces=SPACE)


def test_a_steering_script_round_trip(tmp_path):
    """A real upstream-style steering script, run the way an agent runs it: the input built
    here, the placeholders substituted, the output parsed back; the script drives Optuna
    with the points it is given (ask/tell over %IN/%OUT)."""
    script = tmp_path / "steer.py"
    script.write_text(
        textwrap.dedent("""
        import json, sys
        import optuna
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        inp, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
        data = json.load(open(inp))
        space = data["opt_space"]
        dists = {
            "lr": optuna.distributions.FloatDistribution(space["lr"]["dimension"]["low"], space["lr"]["dimension"]["high"], log=True),
            "layers": optuna.distributions.IntDistribution(space["layers"]["dimension"]["low"], space["layers"]["dimension"]["high"]),
        }
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
        for point, loss in data["points"]:
            if loss is not None:
                study.add_trial(optuna.trial.create_trial(params=point, distributions=dists, value=loss))
        pts = []
        for _ in range(n):
            t = study.ask(dists)
            pts.append(t.params)
        json.dump(pts, open(out, "w"))
    """)
    )
    points = [
        _pt(1, {"lr": 0.01, "layers": 2}, "evaluated", 0.3),
        _pt(2, {"lr": 0.001, "layers": 3}, "evaluated", 0.0),
    ]
    (tmp_path / "in.json").write_text(json.dumps(build_steering_input(points, RAW_SPACE)))
    cmd = substitute_placeholders(
        f"{sys.executable} steer.py %IN %OUT %NUM_POINTS",
        {"%IN": "in.json", "%OUT": "out.json", "%NUM_POINTS": "3", "%MAX_POINTS": "10"},
    )
    subprocess.run(cmd, shell=True, cwd=tmp_path, check=True, capture_output=True)
    got = parse_steering_output((tmp_path / "out.json").read_text(), spaces=SPACE)
    assert len(got) == 3
