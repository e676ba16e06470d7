"""A stream with 2 or 3 worker processes yields exactly the chunks and batches of a 1-worker one;
its workers' failures and deaths are errors in the caller, and none outlives its epoch."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal

import awkward as ak
import numpy as np
import pytest

from phpo.data import DataError, Stream, compute_specs

from .conftest import COMMON, DY, HZZ, TTBAR


def _nan_parquet(path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rng = np.random.default_rng(5)
    n = 400
    a = rng.normal(size=n)
    a[rng.random(n) < 0.1] = np.nan
    cnt = rng.integers(0, 5, n)
    jc = rng.normal(size=int(cnt.sum()))
    jc[rng.random(jc.size) < 0.1] = np.nan
    pq.write_table(
        pa.table(
            {
                "a": a,
                "b": rng.integers(0, 9, n).astype("int16"),
                "f": rng.random(n) < 0.5,
                "j": ak.to_arrow(ak.unflatten(jc, cnt), extensionarray=False),
                "k": ak.to_arrow(
                    ak.unflatten(rng.integers(0, 2, int(cnt.sum())).astype(bool), cnt), extensionarray=False
                ),
            }
        ),
        path,
        row_group_size=70,
    )
    return str(path)


def _epoch(s: Stream, epoch: int = 0) -> list:
    out = []
    for c in [*s.batches(37, epoch), *s.chunks(epoch), s.whole()]:
        out.append((c.x, c.mask, c.y, c.source, {k: v for k, v in c.ids.items()}))
    return out


def _assert_same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for (x1, m1, y1, s1, i1), (x2, m2, y2, s2, i2) in zip(a, b, strict=True):
        for u, v in ((x1, x2), (m1, m2), (y1, y2), (s1, s2)):
            if u is None:
                assert v is None
                continue
            assert u.dtype == v.dtype and u.shape == v.shape and u.flags.c_contiguous == v.flags.c_contiguous
            np.testing.assert_array_equal(u, v)
        assert i1.keys() == i2.keys()
        for k in i1:
            np.testing.assert_array_equal(i1[k], i2[k])


CASES = [
    lambda p: dict(files=[HZZ], labels=[1], chunk_size=700),
    lambda p: dict(
        files=[HZZ],
        labels=[1],
        chunk_size=500,
        jagged_cap=2,
        normalise="standard",
        mask="mlaas4hep",
        pad_value=-3.0,
    ),
    lambda p: dict(files=[HZZ], labels=[1], chunk_size=900, shuffle=False, mask=None, normalise=None),
    lambda p: dict(
        files=[TTBAR, DY], labels=[1, 0], branches=COMMON, identifier=["event", "run"], chunk_size=150, seed=3
    ),
    lambda p: dict(files=[DY], label_branch="nMuon", chunk_size=100, jagged_cap=3),
    lambda p: dict(files=[_nan_parquet(p / "n.parquet")], labels=[1], chunk_size=90, pad_value=-1),
    lambda p: dict(
        files=[_nan_parquet(p / "n.parquet")] * 2, labels=[1, 0], chunk_size=200, normalise=None, jagged_cap=2
    ),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_two_workers_yield_exactly_the_chunks_of_one(case, tmp_path):
    opts = CASES[case](tmp_path)
    files = opts.pop("files")
    one = Stream(files, **opts)
    two = Stream(files, workers=2, **opts)
    three = Stream(files, workers=3, **opts)
    assert one.num_chunks() > 1
    for epoch in (0, 1):
        ref = _epoch(one, epoch)
        _assert_same(ref, _epoch(two, epoch))
        _assert_same(ref, _epoch(three, epoch))
    # a share of the chunks (DataLoader worker 1 of 2) too
    _assert_same(
        [(c.x, c.mask, c.y, c.source, c.ids) for c in one.chunks(0, 1, 2)],
        [(c.x, c.mask, c.y, c.source, c.ids) for c in two.chunks(0, 1, 2)],
    )


def test_a_stream_stopped_early_with_two_workers_and_bad_workers():
    s = Stream([HZZ], labels=[1], chunk_size=300, workers=2)
    it = s.batches(64)
    first = next(it)
    assert len(mp.active_children()) == 2
    it.close()  # the worker processes are stopped and reaped, nothing left hanging
    assert mp.active_children() == []
    np.testing.assert_array_equal(first.x, next(Stream([HZZ], labels=[1], chunk_size=300).batches(64)).x)
    with pytest.raises(DataError, match="workers"):
        Stream([HZZ], labels=[1], workers=0)


def test_a_worker_that_fails_or_dies_is_an_error_here_and_none_is_left(tmp_path):
    specs = compute_specs([HZZ])
    bad = tmp_path / "cut.root"
    with open(HZZ, "rb") as f:
        raw = f.read()
    bad.write_bytes(raw[:50_000] + b"\0" * 40_000 + raw[90_000:])  # baskets zeroed, metadata kept
    with pytest.raises(DataError) as e:
        list(Stream([str(bad)], labels=[1], specs=specs, chunk_size=300, workers=2).batches(64))
    # raised in a worker process, handed over whole: the same file and branch as in one process
    assert e.value.file == str(bad) and e.value.branch in specs.fkeys + specs.jkeys
    assert mp.active_children() == []

    it = Stream([HZZ], labels=[1], chunk_size=100, workers=2).batches(64)
    next(it)
    workers = mp.active_children()
    assert len(workers) == 2
    os.kill(workers[0].pid, signal.SIGKILL)
    with pytest.raises(DataError, match="died with exit code -9"):
        for _ in it:
            pass
    assert mp.active_children() == []


def test_inside_a_dataloader_worker_it_falls_back_to_one_process():
    pytest.importorskip("torch")
    from phpo.data.adapters import torch_loader

    want = np.concatenate([b.x for b in Stream([HZZ], labels=[1], chunk_size=300).batches(50)])
    s = Stream([HZZ], labels=[1], chunk_size=300, workers=2)
    loader = torch_loader(s, batch_size=50, num_workers=2)  # daemons: they cannot have children
    got = np.concatenate([x.numpy() for x, _ in loader])
    assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, want.tolist()))
