"""Specs against a reference computed event by event; the cache keyed by sizes and mtimes."""

from __future__ import annotations

import functools
import json
import math
import os
import shutil

import numpy as np
import pytest
import uproot

from phpo.data import DataError, Specs, compute_specs, load_or_compute
from phpo.data.cli import main as data_main

from .conftest import DY, HZZ, TTBAR


@functools.lru_cache
def reference(path: str, tree: str) -> dict:
    """min/max/NaN count per branch and jagged max length, one event and one value at a time."""
    t = uproot.open(path)[tree]
    out = {"minv": {}, "maxv": {}, "jdim": {}, "nans": {}}
    for name in t.keys():  # noqa: SIM118 - a TTree's branch names
        br = t[name]
        if br.typename.startswith("char"):
            continue
        lo, hi, jdim, nan = math.inf, -math.inf, 0, 0
        for ev in br.array(library="np"):
            vals = [ev] if np.ndim(ev) == 0 else list(ev)
            if np.ndim(ev):
                jdim = max(jdim, len(vals))
            for v in vals:
                v = float(v)
                if math.isnan(v):
                    nan += 1
                    continue
                lo, hi = min(lo, v), max(hi, v)
        out["minv"][name], out["maxv"][name], out["nans"][name] = lo, hi, nan
        if br.typename.endswith("[]"):
            out["jdim"][name] = jdim
    return out


@pytest.mark.parametrize("path,tree,chunk", [(HZZ, "events", 500), (DY, "tree", 64), (HZZ, "events", 10_000)])
def test_specs_equal_an_event_by_event_reference(path, tree, chunk):
    sp = compute_specs([path], tree=tree, chunk_size=chunk)
    ref = reference(path, tree)
    assert set(sp.fkeys) | set(sp.jkeys) == set(ref["minv"])
    assert sp.jdim == ref["jdim"]
    for k in ref["minv"]:
        assert sp.minv[k] == pytest.approx(ref["minv"][k], rel=1e-7), k
        assert sp.maxv[k] == pytest.approx(ref["maxv"][k], rel=1e-7), k
        assert sp.nan_counts[k] == ref["nans"][k], k
    assert sp.nevts == {path: uproot.open(path)[tree].num_entries}
    assert sp.fkeys == sorted(sp.fkeys) and sp.jkeys == sorted(sp.jkeys)


def test_specs_of_several_files_count_events_per_file_and_merge_ranges():
    sp = compute_specs([TTBAR, DY], branches=["Jet_pt", "MET_pt", "nJet"])
    a, b = (
        compute_specs([TTBAR], branches=["Jet_pt", "MET_pt", "nJet"]),
        compute_specs([DY], branches=["Jet_pt", "MET_pt", "nJet"]),
    )
    assert sp.nevts == {TTBAR: 200, DY: 501}
    for k in ("Jet_pt", "MET_pt", "nJet"):
        assert sp.minv[k] == min(a.minv[k], b.minv[k]) and sp.maxv[k] == max(a.maxv[k], b.maxv[k])
    assert sp.jdim["Jet_pt"] == max(a.jdim["Jet_pt"], b.jdim["Jet_pt"])


def test_nan_values_are_counted_and_left_out_of_min_max(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    p = tmp_path / "n.parquet"
    pq.write_table(pa.table({"a": [1.0, float("nan"), 3.0], "j": [[1.0, float("nan")], [], [5.0]]}), p)
    sp = compute_specs([str(p)])
    assert sp.nan_counts == {"a": 1, "j": 1}
    assert (sp.minv["a"], sp.maxv["a"], sp.minv["j"], sp.maxv["j"]) == (1.0, 3.0, 1.0, 5.0)
    assert sp.jdim == {"j": 2}


def test_the_cache_is_reused_for_the_same_files_and_recomputed_when_one_changes(tmp_path, cache):
    f = tmp_path / "dy.root"
    shutil.copy(DY, f)
    s1, src1 = load_or_compute([str(f)], cache)
    s2, src2 = load_or_compute([str(f)], cache)
    assert (src1, src2) == ("computed", "cache")
    assert s1.to_json() == s2.to_json()
    # same size, new mtime: never the old specs
    st = os.stat(f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    _, src3 = load_or_compute([str(f)], cache)
    assert src3 == "computed"
    # other content (another file copied over it): the specs follow the content
    shutil.copy(TTBAR, f)
    s4, src4 = load_or_compute([str(f)], cache, branches=["Jet_pt"])
    assert src4 == "computed" and s4.nevts[str(f)] == 200
    # other options are another entry
    _, src5 = load_or_compute([str(f)], cache, branches=["MET_pt"])
    assert src5 == "computed"


def test_specs_json_round_trip_and_mlaas4hep_specs_are_accepted(tmp_path):
    sp = compute_specs([DY])
    p = sp.save(tmp_path / "s.json")
    assert Specs.load(p) == sp
    mlaas = {k: json.loads(sp.to_json())[k] for k in ("jdim", "minv", "maxv", "fkeys", "jkeys", "nans")}
    (tmp_path / "m.json").write_text(json.dumps(mlaas))
    m = Specs.load(tmp_path / "m.json")
    assert (m.fkeys, m.jkeys, m.jdim, m.minv) == (sp.fkeys, sp.jkeys, sp.jdim, sp.minv)
    (tmp_path / "bad.json").write_text(json.dumps({"fkeys": []}))
    with pytest.raises(DataError, match="jkeys"):
        Specs.load(tmp_path / "bad.json")


def test_cli_specs_writes_the_mlaas4hep_keys(tmp_path, capsys):
    out = tmp_path / "specs.json"
    assert (
        data_main(
            [
                "specs",
                "--fin",
                f"{TTBAR},{DY}",
                "--fout",
                str(out),
                "--branches",
                "Jet_pt,MET_pt",
                "--identifier",
                "event",
            ]
        )
        == 0
    )
    d = json.loads(out.read_text())
    assert {"jdim", "minv", "maxv", "fkeys", "jkeys", "nans", "nan_counts", "nevts"} <= set(d)
    assert d["fkeys"] == ["MET_pt"] and d["jkeys"] == ["Jet_pt"] and d["nevts"] == {TTBAR: 200, DY: 501}
    assert data_main(["specs", "--fin", DY, "--info"]) == 0
    info = capsys.readouterr().out
    assert '"events": 501' in info and "Jet_pt" in info


def test_mlaas4hep_specs_in_a_stream(tmp_path):
    from phpo.data import Stream

    sp = json.loads(compute_specs([DY]).to_json())
    (tmp_path / "m.json").write_text(
        json.dumps({k: sp[k] for k in ("jdim", "minv", "maxv", "fkeys", "jkeys", "nans")})
    )
    a = Stream([DY], labels=[0], shuffle=False, specs=str(tmp_path / "m.json")).whole()
    b = Stream([DY], labels=[0], shuffle=False).whole()
    np.testing.assert_array_equal(a.x, b.x)
    with pytest.raises(DataError, match="standard normalisation needs the mean and std"):
        Stream([DY], labels=[0], specs=str(tmp_path / "m.json"), normalise="standard")


def test_specs_of_another_machine_are_used_only_for_the_same_content(tmp_path):
    """Machine A's specs, handed to machine B as ``shared-<content key>.json`` (what the agent
    does with the task's specs artifact), serve B's copies whatever their mtimes; a claim that
    does not match the content, or a file changed since, gets a fresh pass."""
    from phpo.schemas.data_specs import specs_content_key

    f = tmp_path / "dy.root"
    shutil.copy(DY, f)
    a, b = tmp_path / "a", tmp_path / "b"
    sa, src = load_or_compute([str(f)], a, branches=["Jet_*"])
    assert src == "computed" and len(sa.fingerprint[0]) == 4
    key = specs_content_key(json.loads(sa.to_json()))
    shared = b / f"shared-{key}.json"
    b.mkdir()
    shutil.copy(next(a.glob("specs-*.json")), shared)
    st = os.stat(f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**12))  # B's copy has another mtime
    sb, src = load_or_compute([str(f)], b, branches=["Jet_*"])
    assert src == "shared" and sb.minv == sa.minv and sb.nevts == sa.nevts
    assert sb.fingerprint[0][2] == os.stat(f).st_mtime_ns / 1e9  # B's own mtime, so B's entry stays current
    assert load_or_compute([str(f)], b, branches=["Jet_*"])[1] == "cache"
    # other options: not these specs
    assert load_or_compute([str(f)], b, branches=["MET_pt"])[1] == "computed"
    # a shared file whose content is not what its name says is not used
    c = tmp_path / "c"
    c.mkdir()
    bad = json.loads(sa.to_json())
    bad["fingerprint"][0][3] = "0" * 64
    (c / f"shared-{key}.json").write_text(json.dumps(bad))
    assert load_or_compute([str(f)], c, branches=["Jet_*"])[1] == "computed"
    # the file replaced by another one: its content key differs, the shared specs are not found
    shutil.copy(TTBAR, f)
    d = tmp_path / "d"
    d.mkdir()
    shutil.copy(shared, d / shared.name)
    sd, src = load_or_compute([str(f)], d, branches=["Jet_*"])
    assert src == "computed" and sd.nevts == {str(f): 200}
