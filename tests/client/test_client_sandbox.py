"""The sandbox: *.json *.py *.sh *.yaml of the submit directory, top level only, size-capped."""

from __future__ import annotations

import io
import tarfile

import pytest

from phpo.client import PhpoError, SandboxTooLarge, build_sandbox, sandbox_files


def _tree(tmp_path):
    for name in (
        "train.py",
        "space.json",
        "run.sh",
        "conf.yaml",
        "notes.txt",
        "data.root",
        "conf.yml",
        ".secret.json",
    ):
        (tmp_path / name).write_text(f"# {name}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep.py").write_text("x = 1\n")
    (tmp_path / "dir.json").mkdir()  # a directory with a matching name is not a file
    return tmp_path


def test_only_the_four_patterns_at_the_top_level(tmp_path):
    files = [p.name for p in sandbox_files(_tree(tmp_path))]
    assert files == ["conf.yaml", "run.sh", "space.json", "train.py"]


def test_tarball_holds_the_files_with_their_content(tmp_path):
    data = build_sandbox(_tree(tmp_path))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        names = sorted(tar.getnames())
        assert names == ["conf.yaml", "run.sh", "space.json", "train.py"]
        assert tar.extractfile("train.py").read() == b"# train.py\n"


def test_empty_directory_has_no_sandbox(tmp_path):
    (tmp_path / "data.csv").write_text("1,2\n")
    assert build_sandbox(tmp_path) is None


def test_size_cap_names_the_biggest_file(tmp_path):
    (tmp_path / "small.py").write_text("x = 1\n")
    (tmp_path / "huge.json").write_bytes(b"0" * 3_000_000)
    with pytest.raises(SandboxTooLarge, match=r"huge\.json \(3\.0 MB\)") as e:
        build_sandbox(tmp_path, max_bytes=1_000_000)
    assert "--trainingDS" in str(e.value)


def test_not_a_directory(tmp_path):
    with pytest.raises(PhpoError, match="not a directory"):
        sandbox_files(tmp_path / "missing")
