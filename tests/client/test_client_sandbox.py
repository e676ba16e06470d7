"""The sandbox: *.json *.py *.sh *.yaml under the submit directory (subdirectories included, as
upstream's ``find``), plus files named explicitly; hidden files, virtualenvs and caches stay home
and are listed; the total size is capped."""

from __future__ import annotations

import io
import tarfile

import pytest

from phpo.client import PhpoError, SandboxTooLarge, build_sandbox, sandbox_files
from phpo.client.sandbox import plan_sandbox


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


def test_the_four_patterns_with_subdirectories(tmp_path):
    plan = plan_sandbox(_tree(tmp_path))
    assert sorted(plan.files) == ["conf.yaml", "run.sh", "space.json", "sub/deep.py", "train.py"]
    assert [p.name for p in sandbox_files(tmp_path)] == [
        "conf.yaml",
        "run.sh",
        "space.json",
        "deep.py",
        "train.py",
    ]
    assert plan.left_out["hidden"] == [".secret.json"]
    assert sorted(plan.left_out["other files (not *.json *.py *.sh *.yaml)"]) == [
        "conf.yml",
        "data.root",
        "notes.txt",
    ]
    summary = plan.summary()
    assert "5 files" in summary and "sub/deep.py" in summary and ".secret.json" in summary


def test_tarball_holds_directories_and_regular_files_only(tmp_path):
    _tree(tmp_path)
    (tmp_path / "link.py").symlink_to(tmp_path / "train.py")  # a link ships its target's content
    (tmp_path / "sub" / "run.sh").write_text("echo hi\n")
    (tmp_path / "sub" / "run.sh").chmod(0o755)
    data = build_sandbox(tmp_path)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert sorted(members) == [
            "conf.yaml",
            "link.py",
            "run.sh",
            "space.json",
            "sub",
            "sub/deep.py",
            "sub/run.sh",
            "train.py",
        ]
        assert all(m.isfile() or m.isdir() for m in members.values())
        assert members["sub"].isdir() and members["link.py"].isfile()
        assert tar.extractfile("train.py").read() == b"# train.py\n"
        assert tar.extractfile("link.py").read() == b"# train.py\n"
        assert tar.extractfile("sub/deep.py").read() == b"x = 1\n"
        assert members["sub/run.sh"].mode & 0o111 and members["train.py"].uid == 0


def test_hidden_dirs_virtualenvs_and_caches_stay_home(tmp_path):
    (tmp_path / "train.py").write_text("")
    for d in (".git", "venv", "__pycache__", "pkg/.cache"):
        (tmp_path / d).mkdir(parents=True)
        (tmp_path / d / "x.py").write_text("")
    (tmp_path / "venv" / "pyvenv.cfg").write_text("home = /usr\n")
    (tmp_path / "pkg" / "mod.py").write_text("")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "lib").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    plan = plan_sandbox(tmp_path)
    assert sorted(plan.files) == ["pkg/mod.py", "train.py"]
    assert plan.left_out == {
        "hidden": [".git/", "pkg/.cache/"],
        "virtual environments": ["venv/"],
        "caches": ["__pycache__/"],
        "links to directories": ["lib/"],
    }


def test_files_named_explicitly_ship_whatever_their_suffix(tmp_path):
    _tree(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.bin").write_bytes(b"\0" * 10)
    outside = tmp_path.parent / f"{tmp_path.name}-common.txt"
    outside.write_text("shared\n")
    plan = plan_sandbox(tmp_path, ["notes.txt", "model/", ".secret.json", str(outside)])
    assert {"notes.txt", "model/weights.bin", ".secret.json", outside.name} <= set(plan.files)
    assert "notes.txt" not in plan.describe_left_out() and ".secret.json" not in plan.describe_left_out()
    with pytest.raises(PhpoError, match="'nope.txt' does not exist"):
        plan_sandbox(tmp_path, ["nope.txt"])


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
