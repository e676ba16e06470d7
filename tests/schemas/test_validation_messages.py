"""A pydantic error is said the same way by the server and the client (phpo.schemas.errors)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from phpo.client.client import spec_error
from phpo.schemas import TaskSpec
from phpo.schemas.errors import validation_messages


def _error(**data) -> ValidationError:
    with pytest.raises(ValidationError) as e:
        TaskSpec.model_validate(
            {
                "evaluationExec": "x",
                "searchSpace": {"a": {"method": "uniform", "dimension": {"low": 0, "high": 1}}},
                **data,
            }
        )
    return e.value


def test_unknown_field_and_location():
    e = _error(maxPoint=3)
    loc, msg = validation_messages(e)
    assert loc == "maxPoint" and msg == "maxPoint: unknown field"
    err = spec_error(e)
    assert (err.field, err.message) == ("maxPoint", "maxPoint: unknown field")


def test_problem_without_location_takes_the_default():
    from phpo.schemas.api import TokenCreate

    with pytest.raises(ValidationError) as e:
        TokenCreate.model_validate({"name": "", "role": "nobody"})
    loc, msg = validation_messages(e.value, "token")
    assert loc and "Value error, " not in msg and msg.count(": ") >= 2
