"""The wheel holds every module of the five folders, and each subpackage imports from it.

Guards against an editable install that finds subpackages a wheel silently drops.
Also pins the dependency direction of docs/server-core.md ("Who may import whom"): schemas imports nothing of ours.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ["schemas", "steering", "server", "evaluation_container", "client", "data"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (whl,) = out.glob("phpo-*.whl")
    return whl


def source_files() -> set[str]:
    files = set()
    for folder in FOLDERS:
        for p in (ROOT / folder).rglob("*"):
            if (
                p.is_file()
                and "__pycache__" not in p.parts
                and p.suffix in {".py", ".ini", ".mako", ".json", ".sh", ".html", ".js", ".css"}
            ):
                files.add("phpo/" + str(p.relative_to(ROOT)))
    return files


def test_wheel_contains_every_source_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(source_files() - names)
    assert not missing, f"the wheel lacks {len(missing)} files, e.g. {missing[:10]}"


def test_every_subpackage_imports_from_the_wheel(wheel, tmp_path):
    zipfile.ZipFile(wheel).extractall(tmp_path)
    code = (
        "import importlib, sys\n"
        f"for name in {FOLDERS!r}:\n"
        "    m = importlib.import_module('phpo.' + name)\n"
        f"    assert m.__file__.startswith({str(tmp_path)!r}), (name, m.__file__)\n"
        "print('ok')\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        timeout=120,
    )
    assert p.returncode == 0 and "ok" in p.stdout, p.stderr


def _imported_phpo_packages(folder: str) -> set[str]:
    found = set()
    for path in (ROOT / folder).rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mods = [node.module]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            else:
                continue
            for m in mods:
                if m.startswith("phpo."):
                    found.add(m.split(".")[1])
    return found - {folder}


# who may import whom (docs/server-core.md). The CLI's lazy dispatch of `phpo server` and
# `phpo agent` goes through importlib by name, so it does not show up here.
ALLOWED = {
    "schemas": set(),
    "steering": {"schemas"},
    "server": {"schemas", "steering"},
    "client": {"schemas"},
    "evaluation_container": {"schemas", "client", "data"},  # the SDK hands payloads their data as a stream
    "data": {"schemas"},
}


@pytest.mark.parametrize("folder", FOLDERS)
def test_dependency_direction(folder):
    extra = _imported_phpo_packages(folder) - ALLOWED[folder]
    assert not extra, f"phpo.{folder} imports {sorted(extra)}, which docs/server-core.md forbids"


def test_schemas_import_no_framework():
    for path in (ROOT / "schemas").rglob("*.py"):
        text = path.read_text()
        for lib in ("sqlalchemy", "fastapi", "httpx"):
            assert f"import {lib}" not in text and f"from {lib}" not in text, f"{path.name} imports {lib}"
