"""The real HEP files of tests/data/hep (scikit-hep-testdata, BSD-3-Clause, licence beside them)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("uproot", reason="phpo[data] is not installed (uproot)")
pytest.importorskip("awkward", reason="phpo[data] is not installed (awkward)")

HEP = Path(__file__).resolve().parents[1] / "data" / "hep"
HZZ = str(HEP / "uproot-HZZ.root")
ZMUMU = str(HEP / "uproot-Zmumu.root")
TTBAR = str(HEP / "nanoAOD_2015_CMS_Open_Data_ttbar.root")
DY = str(HEP / "uproot-small-dy-withoffsets.root")
# the branches the tt̄ and Drell-Yan files have in common (flat and jagged)
COMMON = ["nJet", "nMuon", "Jet_jetId", "Jet_pt", "MET_pt", "Muon_charge", "Muon_pt"]


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"
