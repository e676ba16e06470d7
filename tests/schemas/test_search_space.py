"""Canonical search space and the three upstream formats (docs/compatibility.md, Search spaces)."""

from __future__ import annotations

import pytest

from phpo.schemas import (
    ArrayParam,
    CategoricalParam,
    FixedParam,
    FloatParam,
    IntParam,
    NormalParam,
    SearchSpace,
    SearchSpaceError,
    parse_search_space,
)

METHOD_DIMENSION = {
    "cat": {"method": "categorical", "dimension": {"categories": ["a", "b"]}},
    "u": {"method": "uniform", "dimension": {"low": 0, "high": 1}},
    "ui": {"method": "uniformint", "dimension": {"low": 1, "high": 8}},
    "qu": {"method": "quniform", "dimension": {"low": 0, "high": 1, "q": 0.25}},
    "lu": {"method": "loguniform", "dimension": {"low": 1e-4, "high": 1e-1, "base": 10}},
    "qlu": {"method": "qloguniform", "dimension": {"low": 1, "high": 100, "q": 1}},
    "n": {"method": "normal", "dimension": {"mu": 0, "sigma": 2}},
    "qn": {"method": "qnormal", "dimension": {"mu": 0, "sigma": 2, "q": 0.5}},
    "ln": {"method": "lognormal", "dimension": {"mu": 0, "sigma": 1}},
    "qln": {"method": "qlognormal", "dimension": {"mu": 0, "sigma": 1, "q": 0.1}},
    "f": {"method": "fixed", "dimension": {"value": 42}},
}


def test_method_dimension_form_converts_every_method():
    s = parse_search_space(METHOD_DIMENSION).params
    assert s["cat"] == CategoricalParam(choices=["a", "b"])
    assert s["u"] == FloatParam(low=0, high=1)
    assert s["ui"] == IntParam(low=1, high=8)
    assert s["qu"] == FloatParam(low=0, high=1, step=0.25)
    assert s["lu"] == FloatParam(low=1e-4, high=1e-1, log=True)
    assert s["qlu"] == FloatParam(low=1, high=100, log=True, step=1)
    assert s["n"] == NormalParam(mu=0, sigma=2)
    assert s["qn"] == NormalParam(mu=0, sigma=2, step=0.5)
    assert s["ln"] == NormalParam(mu=0, sigma=1, log=True)
    assert s["qln"] == NormalParam(mu=0, sigma=1, log=True, step=0.1)
    assert s["f"] == FixedParam(value=42)


def test_type_params_bounds_form():
    s = parse_search_space(
        {
            "act": {"type": "Choice", "params": {"choices": ["relu", "tanh"]}},
            "depth": {"type": "TransitionChoice", "params": {"choices": [1, 2, 3]}},
            "x": {"type": "Scalar", "bounds": [-1, 1]},
            "k": {"type": "Scalar", "params": {"lower": 1, "upper": 9}, "integer": True},
            "lr": {"type": "Log", "params": {"lower": 1e-5, "upper": 1e-2}},
            "w": {"type": "Array", "params": {"shape": [3]}, "bounds": [0, 1]},
        }
    ).params
    assert s["act"] == CategoricalParam(choices=["relu", "tanh"])
    assert s["depth"] == CategoricalParam(choices=[1, 2, 3], ordered=True)
    assert s["x"] == FloatParam(low=-1, high=1)
    assert s["k"] == IntParam(low=1, high=9)
    assert s["lr"] == FloatParam(low=1e-5, high=1e-2, log=True)
    assert s["w"] == ArrayParam(size=3, low=0, high=1)


def test_range_form_and_canonical_form():
    assert parse_search_space({"x": [0, 2.5]}).params["x"] == FloatParam(low=0, high=2.5)
    canon = {"params": {"n": {"type": "int", "low": 1, "high": 3}}}
    assert parse_search_space(canon) == SearchSpace.model_validate(canon)


@pytest.mark.parametrize(
    "space, needle",
    [
        ({"lr": {"method": "gaussian", "dimension": {}}}, "parameter 'lr': unknown method 'gaussian'"),
        ({"lr": {"type": "Banana"}}, "parameter 'lr': unknown type 'Banana'"),
        ({"x": {"method": "uniform", "dimension": {"low": 2, "high": 1}}}, "parameter 'x'"),
        ({"x": {"method": "uniform", "dimension": {"low": 2, "high": 1}}}, "greater than high"),
        ({"c": {"method": "categorical", "dimension": {"categories": []}}}, "parameter 'c': 'categories'"),
        ({"c": {"type": "categorical", "choices": []}}, "parameter 'c'"),
        ({"x": {"method": "uniform", "dimension": {"low": "a", "high": 1}}}, "'low' must be a number"),
        ({"x": {"method": "uniform", "dimension": {"high": 1}}}, "'low' is missing"),
        ({"x": {"method": "loguniform", "dimension": {"low": 0, "high": 1}}}, "low > 0"),
        ({"x": [1]}, "parameter 'x': a range must be [low, high]"),
        ({"x": "big"}, "parameter 'x'"),
        ({"x": {"foo": 1}}, "cannot tell its format"),
        ({}, "non-empty"),
    ],
)
def test_bad_spaces_name_the_parameter(space, needle):
    with pytest.raises(SearchSpaceError) as e:
        parse_search_space(space)
    assert needle in str(e.value)


def test_conditional_parameters_and_point_problems():
    s = parse_search_space(
        {
            "params": {
                "opt": {"type": "categorical", "choices": ["sgd", "adam"]},
                "momentum": {"type": "float", "low": 0, "high": 1, "when": {"opt": ["sgd"]}},
                "n": {"type": "int", "low": 2, "high": 10, "step": 2},
            }
        }
    )
    assert s.ordered_names().index("opt") < s.ordered_names().index("momentum")
    assert s.problems({"opt": "sgd", "momentum": 0.5, "n": 4}) == []
    assert s.problems({"opt": "adam", "n": 4}) == []
    assert any("condition" in p for p in s.problems({"opt": "adam", "momentum": 0.1, "n": 4}))
    assert any("'momentum' is missing" in p for p in s.problems({"opt": "sgd", "n": 4}))
    assert any("step" in p for p in s.problems({"opt": "adam", "n": 3}))
    assert any("outside" in p for p in s.problems({"opt": "adam", "n": 12}))
    assert any("not a parameter" in p for p in s.problems({"opt": "adam", "n": 4, "zz": 1}))
    with pytest.raises(ValueError, match="unknown parameter 'nope'"):
        SearchSpace.model_validate(
            {"params": {"a": {"type": "float", "low": 0, "high": 1, "when": {"nope": [1]}}}}
        )


def test_zero_and_bool_are_checked_exactly():
    s = parse_search_space({"n": {"method": "uniformint", "dimension": {"low": 0, "high": 3}}})
    assert s.problems({"n": 0}) == []
    assert s.problems({"n": True}) != []  # a boolean is not an integer
