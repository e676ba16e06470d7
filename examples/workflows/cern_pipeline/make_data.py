"""How data/ was made: the events of three real HEP sample files (scikit-hep-testdata, BSD-3;
licence in data/), cut down to the branches the feature step reads, so the example ships small.

    python make_data.py HZZ.root Zmumu.root nanoAOD_ttbar.root   # writes data/*.root

- ``hzz.root``: H->ZZ->4l simulation (2,421 events): muons, electrons, jets, MET as px/py/pz/E;
- ``zmumu.root``: Z->mumu (2,304 events): the two muons as flat branches;
- ``ttbar.root``: CMS NanoAOD ttbar (200 events): muons, jets, MET, electron count.
"""

from __future__ import annotations

import sys
from pathlib import Path

import awkward as ak
import uproot

HERE = Path(__file__).resolve().parent / "data"


def copy(src: str, tree: str, dest: str, branches: list[str]) -> None:
    arrays = uproot.open(src)[tree].arrays(branches, library="ak")
    with uproot.recreate(HERE / dest) as f:
        jagged = {b: arrays[b] for b in branches if arrays[b].ndim > 1}
        flat = {b: ak.to_numpy(arrays[b]) for b in branches if arrays[b].ndim == 1}
        groups: dict[str, dict] = {}
        for b, a in jagged.items():
            groups.setdefault(b.split("_")[0], {})[b.split("_", 1)[1]] = a
        data = {**flat, **{g: ak.zip(cols) for g, cols in groups.items()}}
        f.mktree("events", {k: v.type if isinstance(v, ak.Array) else v.dtype for k, v in data.items()})
        f["events"].extend(data)


def main(hzz: str, zmumu: str, ttbar: str) -> None:
    HERE.mkdir(exist_ok=True)
    copy(
        hzz,
        "events",
        "hzz.root",
        [
            "Muon_Px",
            "Muon_Py",
            "Muon_Pz",
            "Muon_E",
            "Muon_Charge",
            "Jet_Px",
            "Jet_Py",
            "Electron_Px",
            "MET_px",
            "MET_py",
        ],
    )
    copy(zmumu, "events", "zmumu.root", ["E1", "px1", "py1", "pz1", "Q1", "E2", "px2", "py2", "pz2", "Q2"])
    copy(
        ttbar,
        "Events",
        "ttbar.root",
        [
            "Muon_pt",
            "Muon_eta",
            "Muon_phi",
            "Muon_mass",
            "Muon_charge",
            "Jet_pt",
            "Electron_pt",
            "MET_pt",
            "MET_phi",
        ],
    )


if __name__ == "__main__":
    main(*sys.argv[1:4])
