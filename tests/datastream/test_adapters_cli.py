"""PyTorch, Keras and numpy adapters; `phpo data read` and `phpo data train` (MLaaS4HEP's
files.txt / labels.txt / model.py / params.json)."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from phpo.client.cli.main import main as phpo_main
from phpo.data import Stream
from phpo.data.adapters import keras_generator, numpy_batches, steps

from .conftest import COMMON, DY, TTBAR


@pytest.fixture(scope="module")
def pair():
    return Stream([TTBAR, DY], labels=[1, 0], branches=COMMON, identifier=["event"], chunk_size=100, seed=1)


def test_torch_dataloader_with_two_workers_gives_every_event_once():
    torch = pytest.importorskip("torch")
    from phpo.data.adapters import torch_loader

    s = Stream([DY], label_branch="nMuon", chunk_size=100, seed=1)
    loader = torch_loader(s, batch_size=64, num_workers=2)
    xs, ys = [], []
    for x, y in loader:
        assert x.dtype == torch.float32 and x.shape[1] == s.dim
        xs.append(x.numpy())
        ys.append(y.numpy())
    got = np.concatenate(xs)
    whole = s.whole()
    assert len(got) == 501 and float(np.concatenate(ys).sum()) == float(whole.y.sum())
    np.testing.assert_array_equal(np.sort(got, axis=0), np.sort(whole.x, axis=0))


def test_numpy_and_keras_generators(pair):
    n = sum(len(x) for x, _ in numpy_batches(pair, 128))
    assert n == 701
    x, m, y = next(numpy_batches(pair, 64, with_mask=True))
    assert x.shape == m.shape == (64, pair.dim) and y.shape == (64,)
    gen = keras_generator(pair, 128, epochs=2)
    assert sum(1 for _ in gen) == 2 * steps(pair, 128)


def test_tf_dataset():
    tf = pytest.importorskip(
        "tensorflow", reason="tensorflow is not installed here; the tf.data adapter is untested"
    )
    from phpo.data.adapters import tf_dataset

    s = Stream([DY], labels=[0], chunk_size=200)
    assert sum(int(x.shape[0]) for x, _ in tf_dataset(s, 100)) == 501 and tf


def test_phpo_data_read_prints_vectors_and_masks(capsys):
    assert (
        phpo_main(["data", "read", "--fin", DY, "--nevts", "3", "--identifier", "event", "--nan", "-1"]) == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    head, rows = json.loads(lines[0]), [json.loads(ln) for ln in lines[1:]]
    assert head["events"] == 501 and len(rows) == 3 and len(rows[0]["x"]) == head["dim"]
    ref = Stream([DY], identifier=["event"], shuffle=False, pad_value=-1).whole()
    np.testing.assert_allclose([r["x"] for r in rows], ref.x[:3], rtol=1e-6)
    assert [r["mask"] for r in rows] == ref.mask[:3].tolist()
    assert [r["event"] for r in rows] == ref.ids["event"][:3].tolist()


def test_phpo_data_errors_name_the_file(tmp_path, capsys):
    assert phpo_main(["data", "specs", "--fin", DY, "--branch", "Events"]) == 2
    assert "no tree 'Events'" in capsys.readouterr().err


MODEL = """
import torch

def model(idim, hidden=8):
    return torch.nn.Sequential(torch.nn.Linear(idim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
"""


def test_phpo_data_train_takes_mlaas4hep_files_labels_model_and_params(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setenv("PHPO_DATA_CACHE", str(tmp_path / "cache"))
    (tmp_path / "files.txt").write_text(f"{TTBAR}\n{DY}\n")
    (tmp_path / "labels.txt").write_text("1\n0\n")
    (tmp_path / "model.py").write_text(textwrap.dedent(MODEL))
    params = {
        "nevts": -1,
        "chunk_size": 300,
        "epochs": 3,
        "batch_size": 32,
        "shuffle": True,
        "branch": "",
        "selected_branches": ",".join(COMMON),
        "exclude_branches": "",
        "identifier": "event",
        "redirector": "root://cms-xrd-global.cern.ch",
        "verbose": 0,
        "nan": 0,
        "hidden": 8,
        "lr": 0.02,
    }
    (tmp_path / "params.json").write_text(json.dumps(params))
    args = [
        "data",
        "train",
        "--files",
        str(tmp_path / "files.txt"),
        "--labels",
        str(tmp_path / "labels.txt"),
        "--model",
        str(tmp_path / "model.py"),
        "--params",
        str(tmp_path / "params.json"),
        "--fout",
        str(tmp_path / "model.pt"),
    ]
    assert phpo_main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (
        out["framework"] == "torch"
        and out["idim"] == Stream([TTBAR, DY], branches=COMMON, identifier=["event"]).dim
    )
    assert 0 < out["loss"] < 0.69 and out["accuracy"] > 0.75 and out["specs"] == "computed"
    assert (tmp_path / "model.pt").stat().st_size > 0
    # phpo's "workers": the chunks made in 2 processes, the same training to the last digit
    (tmp_path / "params.json").write_text(json.dumps({**params, "workers": 2}))
    assert phpo_main(args) == 0
    two = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (two["loss"], two["accuracy"]) == (out["loss"], out["accuracy"]) and two["specs"] == "cache"
    # an MLaaS4HEP key phpo does not do is refused, not ignored
    (tmp_path / "params.json").write_text(json.dumps({**params, "hist": "pdfs"}))
    assert phpo_main(args) == 2
    assert "params key 'hist' is not supported" in capsys.readouterr().err


def test_sdk_training_data_labels_by_file_name(tmp_path, monkeypatch):
    from phpo.data import DataError
    from phpo.evaluation_container import sdk

    monkeypatch.setenv("PHPO_WORKDIR", str(tmp_path))
    monkeypatch.setenv("PHPO_DATA_CACHE", str(tmp_path / "cache"))
    (tmp_path / "input_ds.json").write_text(json.dumps([TTBAR, DY]))
    s = sdk.training_data(labels={"ttbar": 1, "dy": 0}, branches=COMMON)
    assert s.labels == [1.0, 0.0] and s.specs_source == "computed"
    assert sdk.training_data(labels=lambda f: float("ttbar" in f), branches=COMMON).specs_source == "cache"
    with pytest.raises(DataError, match="0 of the label keys"):
        sdk.training_data(labels={"signal": 1, "dy": 0}, branches=COMMON)
    (tmp_path / "input_ds.json").unlink()
    with pytest.raises(DataError, match="no training files"):
        sdk.training_data(labels=[1])


def test_two_dataloader_workers_on_parquet_and_csv_files(tmp_path):
    """Each forked worker reads the text and Parquet files with its own handles."""
    pytest.importorskip("torch")
    import awkward as ak
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq
    import uproot

    from phpo.data.adapters import torch_loader

    arrays = uproot.open(DY)["tree"].arrays(["MET_pt", "nJet", "nMuon", "Jet_pt"], library="ak")
    pq.write_table(ak.to_arrow_table(arrays, extensionarray=False), tmp_path / "a.parquet", row_group_size=50)
    pcsv.write_csv(
        ak.to_arrow_table(arrays[["MET_pt", "nJet", "nMuon"]], extensionarray=False), tmp_path / "b.csv"
    )
    for f in ("a.parquet", "b.csv"):
        s = Stream([str(tmp_path / f)], labels=[1], chunk_size=60, seed=2)
        next(s.batches(25))  # the parent has read the file before the workers fork
        got = np.concatenate([x.numpy() for x, _ in torch_loader(s, batch_size=25, num_workers=2)])
        np.testing.assert_array_equal(np.sort(got, axis=0), np.sort(s.whole().x, axis=0), err_msg=f)
