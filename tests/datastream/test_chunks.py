"""Chunks: padding and mask against awkward, chunked epochs against the whole file, shuffling,
proportional sampling, normalisation; bad files name the file and the branch."""

from __future__ import annotations

import shutil

import awkward as ak
import numpy as np
import pytest
import uproot

from phpo.data import DataError, Stream, compute_specs

from .conftest import COMMON, DY, HZZ, TTBAR, ZMUMU


@pytest.fixture(scope="module")
def hzz():
    return Stream([HZZ], labels=[1], shuffle=False, chunk_size=700, normalise=None)


@pytest.mark.parametrize("cap", [None, 2])
@pytest.mark.parametrize("blocks", ["one block", "blocks of 256 events"])
def test_padding_and_mask_equal_awkward(cap, blocks):
    s = Stream([HZZ], labels=[1], shuffle=False, normalise=None, jagged_cap=cap, pad_value=-7.0)
    if blocks != "one block":
        s.BLOCK_BYTES = 1  # the matrix written 256 events at a time: 10 blocks, the last partial
        assert s.block_rows == 256
    else:
        assert s.block_rows >= s.num_events
    whole = s.whole()
    arrays = uproot.open(HZZ)["events"].arrays(s.jkeys + s.fkeys, library="ak", how=dict)
    for k in s.jkeys:
        L = s.jlen[k]
        assert (min(cap, s.specs.jdim[k]) if cap else s.specs.jdim[k]) == L
        j = s.columns.index(f"{k}_0")
        padded = ak.pad_none(arrays[k], L, axis=1, clip=True)
        want = ak.to_numpy(ak.fill_none(padded, -7.0)).astype(np.float32)
        np.testing.assert_array_equal(whole.x[:, j : j + L], want, err_msg=k)
        np.testing.assert_array_equal(
            whole.mask[:, j : j + L], ak.to_numpy(~ak.is_none(padded, axis=1)).astype(np.float32)
        )
    for k in s.fkeys:
        np.testing.assert_array_equal(
            whole.x[:, s.columns.index(k)], ak.to_numpy(arrays[k]).astype(np.float32)
        )
    assert (whole.mask[:, : len(s.fkeys)] == 1).all()
    assert whole.x.dtype == whole.mask.dtype == np.float32
    assert s.dim == len(s.fkeys) + sum(s.jlen.values()) == whole.x.shape[1]


@pytest.mark.parametrize("kind", ["valid", "mlaas4hep"])
@pytest.mark.parametrize("cap", [None, 2])
def test_a_mask_kept_as_table_rows_equals_the_mask_written_out(kind, cap, monkeypatch):
    """A chunk without NaN keeps its mask as one row of a small table per event; the batches'
    masks (and everything else) equal those of the mask written out element by element."""
    from phpo.data.chunks import MaskTable

    def epoch():
        s = Stream([HZZ], labels=[1], chunk_size=700, seed=2, mask=kind, jagged_cap=cap)
        pieces = s.plan(0)[0]
        inner, _ = s._make(pieces, s._read_pieces(pieces), None)
        return inner, list(s.batches(100, 0)), s.whole()

    table_chunk, table_batches, table_whole = epoch()
    assert table_chunk.mask is None and table_chunk.mask_rows is not None
    monkeypatch.setattr(MaskTable, "MAX_ROWS", 0)
    written_chunk, written_batches, written_whole = epoch()
    assert written_chunk.mask is not None and written_chunk.mask_rows is None
    assert len(table_batches) == len(written_batches) == 28  # 4 chunks of ~605 events: 7 batches each
    for a, b in zip(table_batches, written_batches, strict=True):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.mask, b.mask)
        assert a.mask.dtype == np.float32 and a.mask.flags.c_contiguous
    np.testing.assert_array_equal(table_whole.mask, written_whole.mask)


def test_mlaas4hep_mask_polarity_is_the_inverse():
    a = Stream([DY], labels=[0], shuffle=False).whole()
    b = Stream([DY], labels=[0], shuffle=False, mask="mlaas4hep").whole()
    np.testing.assert_array_equal(b.mask, 1 - a.mask)
    np.testing.assert_array_equal(a.x, b.x)
    assert Stream([DY], labels=[0], mask=None).whole().mask is None


def test_a_chunked_epoch_equals_the_whole_file(hzz):
    whole = hzz.whole()
    chunks = list(hzz.chunks(0))
    assert len(chunks) == 4 and max(len(c) for c in chunks) <= 700
    np.testing.assert_array_equal(np.concatenate([c.x for c in chunks]), whole.x)
    np.testing.assert_array_equal(np.concatenate([c.mask for c in chunks]), whole.mask)
    batches = list(hzz.batches(100, 0))
    np.testing.assert_array_equal(np.concatenate([b.x for b in batches]), whole.x)


def test_a_shuffled_epoch_is_a_seeded_permutation_of_the_events():
    s = Stream([TTBAR, DY], labels=[1, 0], branches=COMMON, identifier=["event"], chunk_size=150, seed=3)
    whole = s.whole()
    key = lambda c: np.lexsort((c.ids["event"], c.source))  # noqa: E731
    ep0 = list(s.batches(64, 0))
    cat = lambda bs, f: np.concatenate([getattr(b, f) if f != "ids" else b.ids["event"] for b in bs])  # noqa: E731
    got_x, got_src, got_ev = cat(ep0, "x"), cat(ep0, "source"), cat(ep0, "ids")
    order = np.lexsort((got_ev, got_src))
    np.testing.assert_array_equal(got_x[order], whole.x[key(whole)])
    assert not np.array_equal(got_x, whole.x)  # shuffled
    again = np.concatenate([b.x for b in s.batches(64, 0)])
    np.testing.assert_array_equal(again, got_x)  # same seed and epoch, same order
    other = np.concatenate([b.x for b in s.batches(64, 1)])
    assert not np.array_equal(other, got_x)
    # chunks() (fresh arrays) hold the same events as batches()
    np.testing.assert_array_equal(
        np.sort(np.concatenate([c.x for c in s.chunks(0)]), axis=0), np.sort(got_x, axis=0)
    )


def test_every_chunk_takes_each_file_in_proportion():
    s = Stream([TTBAR, DY], labels=[1, 0], branches=COMMON, chunk_size=100, shuffle=True)
    fractions = [c.y.mean() for c in s.chunks(0)]
    assert len(fractions) == 8
    assert all(abs(f - 200 / 701) < 0.02 for f in fractions), fractions
    assert sum(len(c) for c in s.chunks(0)) == 701


def test_worker_shares_are_disjoint_and_complete():
    s = Stream([TTBAR, DY], labels=[1, 0], branches=COMMON, identifier=["event"], chunk_size=100)
    seen = [np.concatenate([b.ids["event"] for b in s.batches(50, 0, w, 2)]) for w in (0, 1)]
    assert not set(seen[0]) & set(seen[1])
    assert len(seen[0]) + len(seen[1]) == 701


def test_normalisations(hzz):
    raw = hzz.whole().x
    mm = Stream([HZZ], labels=[1], shuffle=False, specs=hzz.specs).whole().x
    st = Stream([HZZ], labels=[1], shuffle=False, specs=hzz.specs, normalise="standard").whole().x
    j = hzz.columns.index("MET_px")
    lo, hi = hzz.specs.minv["MET_px"], hzz.specs.maxv["MET_px"]
    np.testing.assert_allclose(mm[:, j], (raw[:, j] - lo) / (hi - lo), rtol=1e-5, atol=1e-6)
    assert mm[:, : len(hzz.fkeys)].min() >= 0 and mm[:, : len(hzz.fkeys)].max() <= 1 + 1e-6
    assert abs(st[:, j].mean()) < 1e-3 and st[:, j].std() == pytest.approx(1, rel=1e-3)


def test_labels_from_a_branch_and_a_validation_split():
    s = Stream([DY], label_branch="nMuon", shuffle=False)
    assert "nMuon" not in s.columns
    np.testing.assert_array_equal(s.whole().y, uproot.open(DY)["tree"]["nMuon"].array(library="np"))
    train, val = Stream([TTBAR, DY], labels=[1, 0], branches=COMMON).split(0.2)
    assert train.num_events + val.num_events == 701 and val.num_events == 40 + 100


def test_training_and_validation_batches_drawn_in_turns_after_an_epoch():
    """The two halves of a split made after an epoch have their own working memory: batches of
    one drawn between batches of the other leave both as they are alone."""
    s = Stream([TTBAR, DY], labels=[1, 0], branches=COMMON, chunk_size=200)
    sum(len(b) for b in s.batches(50))  # the working matrices exist before the split
    train, val = s.split(0.5)
    alone = [b.x for b in train.batches(50)], [b.x for b in val.batches(50)]
    t, v = train.batches(50), val.batches(50)
    turns = [[], []]
    for pair in zip(t, v, strict=False):  # one of each in turn, both in the middle of a chunk
        turns[0].append(pair[0].x)
        turns[1].append(pair[1].x)
    turns[0] += [b.x for b in t]
    turns[1] += [b.x for b in v]
    for got, want in zip(turns, alone, strict=True):
        np.testing.assert_array_equal(np.concatenate(got), np.concatenate(want))


def test_the_same_data_from_parquet_csv_and_json_lines(tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    arrays = uproot.open(DY)["tree"].arrays(library="ak")
    flat = ["MET_pt", "nJet", "nMuon"]
    pq.write_table(
        ak.to_arrow_table(arrays[COMMON], extensionarray=False), tmp_path / "dy.parquet", row_group_size=128
    )
    ak.to_json(arrays[COMMON], tmp_path / "dy.jsonl", line_delimited=True)
    pcsv.write_csv(ak.to_arrow_table(arrays[flat], extensionarray=False), tmp_path / "dy.csv")
    ref = Stream([DY], labels=[0], branches=COMMON, shuffle=False, chunk_size=100)
    for f in ("dy.parquet", "dy.jsonl"):
        s = Stream([str(tmp_path / f)], labels=[0], shuffle=False, chunk_size=100)
        assert s.columns == ref.columns, f
        np.testing.assert_allclose(
            np.concatenate([b.x for b in s.batches(64)]), ref.whole().x, rtol=1e-6, err_msg=f
        )
    s = Stream([str(tmp_path / "dy.csv")], labels=[0], shuffle=False, chunk_size=100)
    r = Stream([DY], labels=[0], branches=flat, shuffle=False)
    np.testing.assert_allclose(np.concatenate([c.x for c in s.chunks()]), r.whole().x, rtol=1e-6)


# --- bad input ---------------------------------------------------------------------------


def test_a_truncated_root_file_names_the_file(tmp_path):
    bad = tmp_path / "cut.root"
    with open(HZZ, "rb") as f:
        bad.write_bytes(f.read()[:60_000])
    with pytest.raises(DataError) as e:
        s = Stream([str(bad)], labels=[1])
        s.whole()
    assert str(bad) in str(e.value)


def test_a_root_file_cut_inside_the_data_names_the_file_and_the_branch(tmp_path):
    specs = compute_specs([HZZ])
    bad = tmp_path / "cut.root"
    with open(HZZ, "rb") as f:
        raw = f.read()
    # keep the header and the TTree metadata (at the end) but zero a stretch of baskets
    bad.write_bytes(raw[:50_000] + b"\0" * 40_000 + raw[90_000:])
    with pytest.raises(DataError) as e:
        Stream([str(bad)], labels=[1], specs=specs).whole()
    assert e.value.file == str(bad) and e.value.branch in specs.fkeys + specs.jkeys
    assert f"branch '{e.value.branch}'" in str(e.value)


def test_wrong_tree_missing_branch_empty_file_and_bad_labels(tmp_path):
    with pytest.raises(DataError, match=r"uproot-HZZ.root'.*no tree 'Events'.*its trees: events"):
        Stream([HZZ], labels=[1], tree="Events")
    with pytest.raises(DataError, match=r"uproot-HZZ.root', branch 'Jet_Pt': no such branch"):
        Stream([HZZ], labels=[1], branches=["Jet_Pt"])
    empty = tmp_path / "empty.root"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty.root': the file is empty"):
        Stream([str(empty)], labels=[1])
    with pytest.raises(DataError, match="2 labels for 1 files"):
        Stream([HZZ], labels=[1, 0])
    # a file lacking a branch the specs list
    with pytest.raises(DataError, match=r"uproot-Zmumu.root', branch '.*': no such branch"):
        Stream([ZMUMU], labels=[0], specs=compute_specs([HZZ]))
    # a string branch asked for by name
    with pytest.raises(DataError, match=r"branch 'Type'"):
        Stream([ZMUMU], labels=[0], branches=["Type"]).whole()
    copy = tmp_path / "z.txt"
    shutil.copy(ZMUMU, copy)
    with pytest.raises(DataError, match="unknown format"):
        Stream([str(copy)], labels=[0])


def test_a_file_behind_an_fsspec_url_reads_as_the_local_one(tmp_path):
    """fsspec's in-memory file system stands in for a remote store (https://, s3://, root:// with
    fsspec-xrootd go through the same uproot FSSpecSource)."""
    fsspec = pytest.importorskip("fsspec")
    with open(DY, "rb") as f, fsspec.open("memory://bucket/dy.root", "wb") as out:
        out.write(f.read())
    remote = Stream(["memory://bucket/dy.root"], labels=[0], shuffle=False, cache_dir=tmp_path / "c")
    local = Stream([DY], labels=[0], shuffle=False)
    np.testing.assert_array_equal(remote.whole().x, local.whole().x)
    assert remote.specs.nevts == {"memory://bucket/dy.root": 501}
    # the memory store tells no modification time: nothing is cached for it, never stale specs
    assert remote.specs_source == "computed" and not (tmp_path / "c").exists()


def test_an_rntuple_reads_as_the_ttree_it_was_written_from(tmp_path):
    """uproot >= 5.7 writes an RNTuple for ``file[name] = arrays``."""
    arrays = uproot.open(DY)["tree"].arrays(COMMON, library="ak", how=dict)
    path = tmp_path / "dy-rntuple.root"
    with uproot.recreate(path) as f:
        f["tree"] = arrays
    if uproot.open(path).classnames().get("tree;1") != "ROOT::RNTuple":
        pytest.skip("this uproot writes a TTree here")
    a = Stream([str(path)], labels=[0], shuffle=False)
    b = Stream([DY], labels=[0], branches=COMMON, shuffle=False)
    assert a.columns == b.columns
    np.testing.assert_allclose(a.whole().x, b.whole().x, rtol=1e-6)
    np.testing.assert_array_equal(a.whole().mask, b.whole().mask)


def test_nan_values_become_the_pad_value_with_mask_zero(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    nan = float("nan")
    p = tmp_path / "n.parquet"
    pq.write_table(pa.table({"a": [1.0, nan, 3.0], "j": [[1.0, nan], [], [5.0]]}), p)
    c = Stream([str(p)], labels=[1], shuffle=False, normalise=None, pad_value=-1).whole()
    np.testing.assert_array_equal(c.x, [[1, 1, -1], [-1, -1, -1], [3, 5, -1]])
    np.testing.assert_array_equal(c.mask, [[1, 1, 0], [0, 0, 0], [1, 1, 0]])
    m = Stream([str(p)], labels=[1], shuffle=False, mask="mlaas4hep").whole().mask
    np.testing.assert_array_equal(m, 1 - c.mask)


def test_nan_values_across_blocks_of_rows(tmp_path):
    """NaN in flat and jagged branches of a file written in many blocks of rows: each value and
    mask entry equals the event-by-event reference."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(5)
    n = 1000
    flat = rng.normal(size=n)
    flat[rng.random(n) < 0.1] = np.nan
    jag = [list(rng.normal(size=rng.integers(0, 5))) for _ in range(n)]
    for ev in jag:
        for i in range(len(ev)):
            if rng.random() < 0.1:
                ev[i] = np.nan
    p = tmp_path / "nan.parquet"
    pq.write_table(pa.table({"a": flat, "j": jag}), p)
    s = Stream([str(p)], labels=[1], shuffle=False, normalise=None, pad_value=-1, jagged_cap=3)
    s.BLOCK_BYTES = 1
    assert s.block_rows == 256 and s.columns == ["a", "j_0", "j_1", "j_2"]
    c = s.whole()
    want_x = np.full((n, 4), -1, dtype=np.float32)
    want_m = np.zeros((n, 4), dtype=np.float32)
    for r in range(n):
        for col, v in enumerate([flat[r], *jag[r][:3]]):
            if not np.isnan(v):
                want_x[r, col], want_m[r, col] = v, 1
    np.testing.assert_array_equal(c.x, want_x)
    np.testing.assert_array_equal(c.mask, want_m)
