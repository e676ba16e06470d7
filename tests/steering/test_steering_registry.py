"""Names, errors and lazy imports of the optimizer registry."""

from __future__ import annotations

import subprocess
import sys

import pytest
from phpo.steering.base import OptimizerConfig
from phpo.steering.registry import available, create_optimizer
from steering_helpers import CONTINUOUS


def test_the_built_in_names():
    assert available() == [
        "optuna.tpe",
        "optuna.random",
        "optuna.cmaes",
        "optuna.gp",
        "optuna.qmc",
        "optuna.nsga2",
        "skopt.gp",
        "skopt.rf",
        "skopt.et",
        "skopt.gbrt",
        "grid",
        "random",
    ]


def test_default_is_tpe_with_constant_liar():
    opt = create_optimizer(None, OptimizerConfig(space=CONTINUOUS))
    assert opt.name == "optuna.tpe"
    assert type(opt.study.sampler).__name__ == "TPESampler"
    assert opt.study.sampler._constant_liar is True


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(
        ValueError, match=r"unknown optimizer 'optuna.tpx' \(known: optuna.tpe, .*skopt.gbrt.*random\)"
    ):
        create_optimizer("optuna.tpx", OptimizerConfig(space=CONTINUOUS))


def test_external_is_not_an_in_process_optimizer():
    with pytest.raises(ValueError, match="steering job"):
        create_optimizer("external", OptimizerConfig(space=CONTINUOUS))


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("optuna.tpe", {"n_startup": 3}, r"unknown option\(s\) \['n_startup'\].*n_startup_trials"),
        ("optuna.qmc", {"qmc_type": "lattice"}, "optuna.qmc: bad option"),
        ("skopt.gp", {"acq_func": "EIps"}, "run times"),
        ("skopt.gp", {"no_such": 1}, "bad option"),
        ("grid", {"grid_points": 0}, "grid_points"),
        ("grid", {"other": 1}, r"unknown option\(s\) \['other'\]"),
        ("random", {"other": 1}, r"unknown option\(s\) \['other'\]"),
    ],
)
def test_bad_options_are_named(name, options, match):
    with pytest.raises(ValueError, match=match):
        create_optimizer(name, OptimizerConfig(space=CONTINUOUS, options=options))


@pytest.mark.parametrize("name", ["skopt.gp", "optuna.cmaes"])
def test_single_objective_plugins_refuse_two_directions(name):
    with pytest.raises(ValueError, match="single objective|one objective"):
        create_optimizer(name, OptimizerConfig(space=CONTINUOUS, directions=["minimize", "maximize"]))


def test_seed_in_options_is_used():
    a = create_optimizer("optuna.random", OptimizerConfig(space=CONTINUOUS, options={"seed": 7}))
    b = create_optimizer("optuna.random", OptimizerConfig(space=CONTINUOUS, seed=7))
    assert a.ask(3) == b.ask(3)


def test_libraries_are_imported_only_when_needed():
    code = (
        "import sys\n"
        "from phpo.schemas.search_space import parse_search_space\n"
        "from phpo.steering.base import OptimizerConfig\n"
        "from phpo.steering.registry import create_optimizer\n"
        "import phpo.steering, phpo.steering.external\n"
        "cfg = OptimizerConfig(space=parse_search_space({'x': [0.0, 1.0]}))\n"
        "create_optimizer('grid', cfg).ask(2); create_optimizer('random', cfg).ask(2)\n"
        "print(sorted(m for m in ('optuna', 'skopt', 'sklearn', 'torch', 'numpy') if m in sys.modules))\n"
        "create_optimizer('optuna.random', cfg)\n"
        "print('optuna' in sys.modules, 'skopt' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[0] == "[]"
    assert out[1] == "True False"
