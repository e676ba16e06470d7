"""Step 1 of the pipeline: ROOT events -> 14 high-level features per event -> Parquet, with Dask.

One Dask task per ROOT file (uproot reads it, awkward computes the features), gathered into a
``dask.dataframe`` and written as a Parquet dataset (one part per file). The label of an event is
its file's class: 0 H->ZZ, 1 Z->mumu, 2 ttbar. Features (float32, 0 where an event has no such
object): number of muons; pt, eta, phi of the first two muons; the dimuon mass; the sum of the
muon charges; number of jets; leading jet pt; HT (scalar sum of jet pt); MET; number of
electrons.

    python features.py --data data/ --out /tmp/phpo-cern/features.parquet

Writes the evaluation contract's output.json (``loss`` 0, ``metrics``: events per class) so it
runs as a workflow job node.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import awkward as ak
import numpy as np
import pandas as pd

FEATURES = [
    "n_mu",
    "mu1_pt",
    "mu1_eta",
    "mu1_phi",
    "mu2_pt",
    "mu2_eta",
    "mu2_phi",
    "m_mumu",
    "mu_charge",
    "n_jet",
    "jet1_pt",
    "ht",
    "met",
    "n_ele",
]
CLASSES = {"hzz.root": 0, "zmumu.root": 1, "ttbar.root": 2}


def _ptetaphi(px, py, pz):
    pt = np.hypot(px, py)
    return pt, np.arcsinh(pz / np.where(pt > 0, pt, 1.0)), np.arctan2(py, px)


def _first(a, i: int) -> np.ndarray:
    """The i-th object of each event (0 where there is none)."""
    return ak.to_numpy(ak.fill_none(ak.pad_none(a, i + 1)[:, i], 0.0)).astype(np.float64)


def _mass(e, px, py, pz) -> np.ndarray:
    m2 = e**2 - px**2 - py**2 - pz**2
    return np.sqrt(np.clip(m2, 0, None))


def features_of(path: str) -> pd.DataFrame:
    import uproot

    t = uproot.open(path)["events"].arrays(library="ak")
    name = Path(path).name
    n = len(t)
    zeros = np.zeros(n)
    if name == "zmumu.root":  # two muons, flat branches
        mus = [(t["E1"], t["px1"], t["py1"], t["pz1"]), (t["E2"], t["px2"], t["py2"], t["pz2"])]
        kin = [_ptetaphi(*(ak.to_numpy(x) for x in m[1:])) for m in mus]
        e, px, py, pz = (ak.to_numpy(mus[0][k]) + ak.to_numpy(mus[1][k]) for k in range(4))
        cols = {
            "n_mu": zeros + 2,
            "m_mumu": _mass(e, px, py, pz),
            "mu_charge": ak.to_numpy(t["Q1"] + t["Q2"]),
            "n_jet": zeros,
            "jet1_pt": zeros,
            "ht": zeros,
            "met": zeros,
            "n_ele": zeros,
        }
    elif name == "hzz.root":  # jagged px/py/pz/E
        mu = [tuple(_first(t[f"Muon_{c}"], i) for c in ("E", "Px", "Py", "Pz")) for i in range(2)]
        kin = [_ptetaphi(m[1], m[2], m[3]) for m in mu]
        two = ak.to_numpy(t["nMuon"]) >= 2
        e, px, py, pz = (mu[0][k] + mu[1][k] for k in range(4))
        jet_pt = np.hypot(t["Jet_Px"], t["Jet_Py"])
        cols = {
            "n_mu": ak.to_numpy(t["nMuon"]),
            "m_mumu": np.where(two, _mass(e, px, py, pz), 0.0),
            "mu_charge": ak.to_numpy(ak.sum(t["Muon_Charge"], axis=1)),
            "n_jet": ak.to_numpy(t["nJet"]),
            "jet1_pt": _first(ak.sort(jet_pt, ascending=False), 0),
            "ht": ak.to_numpy(ak.sum(jet_pt, axis=1)),
            "met": np.hypot(ak.to_numpy(t["MET_px"]), ak.to_numpy(t["MET_py"])),
            "n_ele": ak.to_numpy(t["nElectron"]),
        }
    elif name == "ttbar.root":  # NanoAOD: pt/eta/phi/mass
        kin = [tuple(_first(t[f"Muon_{c}"], i) for c in ("pt", "eta", "phi")) for i in range(2)]
        m = [_first(t["Muon_mass"], i) for i in range(2)]
        vec = []
        for (pt, eta, phi), mass in zip(kin, m, strict=True):
            px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
            vec.append((np.sqrt(px**2 + py**2 + pz**2 + mass**2), px, py, pz))
        two = ak.to_numpy(t["nMuon"]) >= 2
        e, px, py, pz = (vec[0][k] + vec[1][k] for k in range(4))
        cols = {
            "n_mu": ak.to_numpy(t["nMuon"]),
            "m_mumu": np.where(two, _mass(e, px, py, pz), 0.0),
            "mu_charge": ak.to_numpy(ak.sum(t["Muon_charge"], axis=1)),
            "n_jet": ak.to_numpy(t["nJet"]),
            "jet1_pt": _first(ak.sort(t["Jet_pt"], ascending=False), 0),
            "ht": ak.to_numpy(ak.sum(t["Jet_pt"], axis=1)),
            "met": ak.to_numpy(t["MET_pt"]),
            "n_ele": ak.to_numpy(t["nElectron"]),
        }
    else:
        raise ValueError(f"{path}: not one of the pipeline's files ({', '.join(CLASSES)})")
    for i, (pt, eta, phi) in enumerate(kin, 1):
        has = pt > 0
        cols |= {
            f"mu{i}_pt": pt,
            f"mu{i}_eta": np.where(has, eta, 0.0),
            f"mu{i}_phi": np.where(has, phi, 0.0),
        }
    df = pd.DataFrame({f: np.asarray(cols[f], dtype=np.float32) for f in FEATURES})
    df["label"] = np.int64(CLASSES[name])
    return df


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parent / "data"))
    ap.add_argument("--out", required=True, help="the Parquet dataset (a folder) to write")
    args = ap.parse_args()
    import dask
    import dask.dataframe as dd

    files = sorted(str(p) for p in Path(args.data).glob("*.root") if p.name in CLASSES)
    if len(files) != len(CLASSES):
        raise SystemExit(f"{args.data}: needs {', '.join(CLASSES)}; found {files}")
    meta = pd.DataFrame(
        {**{f: pd.Series(dtype="float32") for f in FEATURES}, "label": pd.Series(dtype="int64")}
    )
    frame = dd.from_delayed([dask.delayed(features_of)(f) for f in files], meta=meta)
    frame.to_parquet(args.out, write_index=False, overwrite=True)
    counts = dd.read_parquet(args.out)["label"].value_counts().compute().sort_index()
    per_class = {f"events_{k}": int(v) for k, v in counts.items()}
    Path("output.json").write_text(json.dumps({"status": 0, "loss": 0.0, "metrics": per_class}))
    print(f"wrote {args.out}: {per_class}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
