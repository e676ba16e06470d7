"""TaskSpec: the upstream options and phpo's extensions."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from phpo.schemas import TaskSpec, parse_duration_minutes
from phpo.schemas.points import EvaluationOutput

SPACE = {"lr": {"method": "loguniform", "dimension": {"low": 1e-4, "high": 1e-1}}}


def spec(**kw):
    return TaskSpec(**{"evaluationExec": "python train.py", "searchSpace": SPACE, **kw})


def test_defaults_follow_upstream():
    s = spec()
    assert (s.nParallelEvaluation, s.maxPoints, s.maxPointsPerEvaluationJob, s.nPointsPerIteration) == (
        1,
        10,
        1,
        2,
    )
    assert s.max_evaluation_jobs == 20  # 2 x maxPoints
    assert (s.evaluationInput, s.evaluationTrainingData, s.evaluationOutput) == (
        "input.json",
        "input_ds.json",
        "output.json",
    )
    assert s.checkpoint_interval_seconds == 300
    assert s.optimizer_name == "optuna.tpe"


def test_steering_exec_implies_external_and_conflicts_with_an_optimizer():
    assert TaskSpec(evaluationExec="x", steeringExec="steer %IN %OUT").optimizer_name == "external"
    with pytest.raises(ValidationError, match="optimizer"):
        spec(steeringExec="steer %IN %OUT", optimizer="optuna.tpe")


def test_unknown_option_is_named():
    with pytest.raises(ValidationError) as e:
        spec(nParallelEvaluations=3)
    assert e.value.errors()[0]["loc"] == ("nParallelEvaluations",)


def test_wrong_types_and_ranges():
    with pytest.raises(ValidationError, match="maxPoints"):
        spec(maxPoints="many")
    with pytest.raises(ValidationError, match="nParallelEvaluation"):
        spec(nParallelEvaluation=0)
    with pytest.raises(ValidationError, match="checkPointToSave"):
        spec(checkPointToSave="../etc/passwd")


@pytest.mark.parametrize(
    "value, seconds", [(5, 300), (0.5, 30), ("30s", 30), ("2m", 120), ("1h", 3600), ("3", 180)]
)
def test_checkpoint_interval(value, seconds):
    assert parse_duration_minutes(value) == seconds


def test_segments_validate_names_and_space_lists():
    segs = [{"name": "photons"}, {"name": "electrons"}]
    s = spec(
        segments=segs,
        searchSpace=[
            {"model_id": 0, "search_space": {"x": [0, 1]}},
            {"model_id": 1, "search_space": {"x": [0, 2]}},
        ],
    )
    assert [sp.params["x"].high for sp in s.segment_spaces()] == [1, 2]
    assert len(spec(segments=segs).segment_spaces()) == 2  # one space cloned per segment
    with pytest.raises(ValidationError, match="duplicate segment names"):
        spec(segments=[{"name": "a"}, {"name": "a"}])
    with pytest.raises(ValidationError, match="segment list is empty"):
        spec(segments=[])
    with pytest.raises(ValidationError, match="model_ids .* do not match"):
        spec(
            segments=segs,
            searchSpace=[
                {"model_id": 0, "search_space": {"x": [0, 1]}},
                {"model_id": 7, "search_space": {"x": [0, 1]}},
            ],
        )


def test_output_file_loss_zero_is_a_value_and_lists_are_multiobjective():
    assert EvaluationOutput.model_validate({"status": 0, "loss": 0.0}).loss == 0.0
    assert EvaluationOutput.model_validate({"loss": [1, 2.5]}).loss == [1.0, 2.5]
    with pytest.raises(ValidationError):
        EvaluationOutput.model_validate({"loss": "nan"})
    with pytest.raises(ValidationError):
        EvaluationOutput.model_validate({"loss": float("inf")})
