"""The prediction path's shortcuts answer what MLflow's pyfunc answers (real models, no server)."""

from __future__ import annotations

import numpy as np
import pytest

from phpo.serving.app import _dumps
from phpo.serving.catalog import Entry


def test_a_pytorch_model_is_called_directly_and_answers_as_pyfunc(tmp_path):
    torch = pytest.importorskip("torch")
    mlflow_pytorch = pytest.importorskip("mlflow.pytorch")
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
    ex = np.zeros((1, 4), dtype=np.float32)
    with torch.no_grad():
        sig = infer_signature(ex, net(torch.from_numpy(ex)).numpy())
    mlflow_pytorch.save_model(
        net, str(tmp_path / "m"), signature=sig, pip_requirements=[], serialization_format="pickle"
    )
    e = Entry(name="m", version="1", uri=str(tmp_path / "m"), owner=None)
    e.load()
    assert e._direct is not None and e.n_features == 4
    x = np.random.default_rng(0).random((7, 4)).astype(np.float32)
    got = e.predict(x)
    assert got.shape == (7, 2)
    assert np.allclose(got, mlflow.pyfunc.load_model(str(tmp_path / "m")).predict(x), atol=1e-6)
    assert not torch.is_inference_mode_enabled()  # the mode ends with the call


def test_a_scikit_learn_model_goes_through_pyfunc(tmp_path):
    sklearn_lm = pytest.importorskip("sklearn.linear_model")
    import mlflow.sklearn

    X = np.random.default_rng(0).random((20, 2))
    mlflow.sklearn.save_model(
        sklearn_lm.LinearRegression().fit(X, 3 * X[:, 0]), str(tmp_path / "s"), pip_requirements=[]
    )
    e = Entry(name="s", version="1", uri=str(tmp_path / "s"), owner=None)
    e.load()
    assert e._direct is None
    assert abs(e.predict(np.array([[2.0, 0.0]]))[0] - 6.0) < 1e-9


def test_answers_are_written_for_every_array_layout_and_dtype():
    a = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert _dumps({"p": a[:, 1]}) == b'{"p":[1.0,3.0,5.0]}'  # not contiguous
    assert _dumps({"p": np.array(["x", 1], dtype=object)}) == b'{"p":["x",1]}'
    assert _dumps({"p": a[1:2]}) == b'{"p":[[2.0,3.0]]}'  # a caller's rows of a batch
