"""Unpacking tarballs from elsewhere (phpo.schemas.archives): what the agent does with sandboxes
and checkpoints, and the server with mlruns/ tarballs. Real tar files, real file systems."""

from __future__ import annotations

import io
import os
import re
import tarfile
from pathlib import Path

import pytest
from phpo.schemas.archives import (
    HEADER_ALLOWANCE,
    ArchiveError,
    ArchiveLimits,
    extract,
    read_beneath,
    unlink_beneath,
    write_beneath,
)

from .agent_helpers import _tar_add, escaping_tarball


def tar(path: Path, members: list[tuple], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as t:
        for m in members:
            _tar_add(t, *m)
    return path


def snapshot(root: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = (
            f"-> {os.readlink(p)}" if p.is_symlink() else p.read_bytes() if p.is_file() else "dir"
        )
    return out


def test_the_cve_2025_4517_tarball_writes_nothing_outside(tmp_path):
    dest = tmp_path / "agent" / "jobs" / "job-1" / "run"
    dest.mkdir(parents=True)
    tb = escaping_tarball(tmp_path / "evil.tgz", dest, 4, "owned.txt", b"written outside")
    before = snapshot(tmp_path)
    with pytest.raises(ArchiveError) as e:
        extract(tb, dest)
    assert e.value.member == "a" and "'a' is a symbolic link" in str(e.value)
    assert "regular files and directories" in str(e.value)
    inside = str(dest.relative_to(tmp_path)) + "/"
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith(inside)} == before
    assert not list(tmp_path.rglob("owned.txt"))


@pytest.mark.parametrize(
    "name,kind,target,needle",
    [
        ("../x", "file", "", "it holds '..'"),
        ("a/../../x", "file", "", "it holds '..'"),
        ("/etc/x", "file", "", "it is absolute"),
        ("a\\..\\x", "file", "", "backslash"),
        ("l", "symlink", "/etc", "symbolic link (to '/etc')"),
        ("h", "hardlink", "a/b", "hard link (to 'a/b')"),
    ],
)
def test_each_refused_member_is_named(tmp_path, name, kind, target, needle):
    dest = tmp_path / "d"
    dest.mkdir()
    tb = tar(tmp_path / "t.tgz", [("ok.txt", "file", "", b"ok"), (name, kind, target, b"x")])
    with pytest.raises(ArchiveError, match=re.escape(needle)) as e:
        extract(tb, dest)
    assert e.value.member == name
    assert not (tmp_path / "x").exists() and not Path("/etc/x").exists()


def test_devices_and_fifos_are_refused(tmp_path):
    for typ, what in (
        (tarfile.CHRTYPE, "a device file"),
        (tarfile.BLKTYPE, "a device file"),
        (tarfile.FIFOTYPE, "a FIFO"),
    ):
        tb = tmp_path / "dev.tar"
        with tarfile.open(tb, "w") as t:
            info = tarfile.TarInfo("zero")
            info.type, info.devmajor, info.devminor = typ, 1, 5
            t.addfile(info)
        dest = tmp_path / f"d{typ.decode()}"
        dest.mkdir()
        with pytest.raises(ArchiveError, match=f"'zero' is {what}"):
            extract(tb, dest)
        assert list(dest.iterdir()) == []


def test_subdirectories_modes_and_every_compression(tmp_path):
    for mode in ("w", "w:gz", "w:bz2", "w:xz"):
        dest = tmp_path / mode.replace(":", "_")
        dest.mkdir()
        tb = tar(
            tmp_path / "ok.tar",
            [
                ("pkg/", "dir"),
                ("pkg/sub/mod.py", "file", "", b"X = 1"),
                ("./run.sh", "file", "", b"#!/bin/sh"),
            ],
            mode,
        )
        done = extract(tb, dest)
        assert (done.files, done.bytes) == (2, len(b"X = 1#!/bin/sh"))
        assert (dest / "pkg" / "sub" / "mod.py").read_bytes() == b"X = 1"
        assert not any(p.name.startswith(".phpo-tmp") for p in dest.rglob("*"))
    with tarfile.open(tmp_path / "suid.tar", "w") as t:
        info = tarfile.TarInfo("tool")
        info.mode, info.size = 0o6777, 2
        t.addfile(info, io.BytesIO(b"ok"))
    extract(tmp_path / "suid.tar", dest)
    assert oct((dest / "tool").stat().st_mode & 0o7777) == oct(0o755)  # no setuid, no group/other write


def test_links_already_in_the_destination_are_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("original")
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "dirlink").symlink_to(outside)
    (dest / "filelink").symlink_to(outside / "victim")
    os.link(outside / "victim", dest / "hardlink")
    with pytest.raises(ArchiveError, match="'dirlink/victim': a symbolic link or a file is in its way"):
        extract(tar(tmp_path / "a.tgz", [("dirlink/victim", "file", "", b"owned")]), dest)
    # a link (or a hard link) at the file's own name is replaced, never written through
    extract(
        tar(tmp_path / "b.tgz", [("filelink", "file", "", b"new"), ("hardlink", "file", "", b"new")]), dest
    )
    assert (outside / "victim").read_text() == "original"
    assert not (dest / "filelink").is_symlink() and (dest / "filelink").read_text() == "new"


def test_sizes_and_counts_are_bounded(tmp_path):
    big = tar(tmp_path / "big.tgz", [(f"m{i}", "file", "", b"0" * 1000) for i in range(5)])
    for limits, needle in (
        (ArchiveLimits(max_total_bytes=3000), "unpacks to more than 3000 bytes"),
        (ArchiveLimits(max_members=4), "more than 4 members"),
        (ArchiveLimits(max_member_bytes=999), "'m0' is 1000 bytes, over the limit"),
    ):
        dest = tmp_path / f"d{len(list(tmp_path.iterdir()))}"
        dest.mkdir()
        with pytest.raises(ArchiveError, match=needle):
            extract(big, dest, limits=limits)
    # a gzip bomb of tar headers: refused after a bounded read, not held in memory
    info = tarfile.TarInfo("x")
    info.pax_headers = {"comment": "A" * (2 * HEADER_ALLOWANCE)}
    with tarfile.open(tmp_path / "pax.tgz", "w:gz", format=tarfile.PAX_FORMAT) as t:
        t.addfile(info, io.BytesIO(b""))
    with pytest.raises(ArchiveError, match="bytes of tar headers"):
        extract(tmp_path / "pax.tgz", dest)
    (tmp_path / "junk").write_bytes(b"not a tarball" * 100)
    with pytest.raises(ArchiveError, match="not a readable tar archive"):
        extract(tmp_path / "junk", dest)


def test_beneath_helpers_never_follow_links(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("root only")
    root = tmp_path / "run"
    root.mkdir()
    (root / "sub").symlink_to(outside)
    (root / "out.json").symlink_to(outside / "secret")
    for rel in ("out.json", "sub/secret"):
        with pytest.raises(OSError):
            read_beneath(root, rel)
    with pytest.raises(OSError):
        write_beneath(root, "sub/new", b"x")
    write_beneath(root, "out.json", b"{}")  # replaces the link
    unlink_beneath(root, "sub/secret")  # a link on the way: nothing removed
    assert (outside / "secret").read_text() == "root only" and not (outside / "new").exists()
    assert read_beneath(root, "out.json") == b"{}"
    with pytest.raises(OSError, match="larger than 1 bytes"):
        read_beneath(root, "out.json", max_bytes=1)
