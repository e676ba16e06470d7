"""Checkpoints: save ``checkPointToSave`` while a payload runs, bring the latest one back.

Saving: every ``checkpoint_interval_s`` the agent fingerprints the listed files and directories
(path, size, mtime of every file) and, only when that changed since the last upload, tars them
(``tar.gz``, paths relative to the working directory) and uploads the tarball as a
``checkpoint`` artifact of the point. A tarball is only uploaded when the files did not change
while it was being written, so a checkpoint caught half-written is retried at the next check
instead of being stored torn. The size limit is the agent's ``--max-checkpoint-mb``.

Only regular files and directories are saved (a link in the checkpoint paths is left out with
a warning, never followed: the payload may point one anywhere), and they are read without
following links on the way, because the agent may run with more rights than its payload.

Restoring (``--checkPointToLoad``, docs/payloads.md): with a name, the tarball is placed under that name for the
payload to open; without, it is unpacked in place by :func:`phpo.schemas.archives.extract`
(regular files and directories only, inside the working directory only, size-bounded): a
checkpoint is uploaded with an agent token, and an agent that unpacked whatever arrives would
let one rogue token write anywhere on every agent that resumes the point.
"""

from __future__ import annotations

import logging
import os
import stat
import tarfile
from collections.abc import Callable
from typing import BinaryIO
from pathlib import Path

from phpo.schemas.archives import (
    DEFAULT_LIMITS,
    ArchiveError,
    ArchiveLimits,
    extract,
    open_beneath,
    open_dir_beneath,
    unlink_beneath,
)

log = logging.getLogger("phpo.agent.checkpoints")

Fingerprint = tuple[tuple[str, int, int], ...]


class CheckpointTooLarge(RuntimeError):
    pass


def _walk(root: Path, rel: str) -> list[tuple[str, int, int]]:
    p = root / rel
    out: list[tuple[str, int, int]] = []
    try:
        st = p.lstat()
    except FileNotFoundError:
        return out
    if p.is_dir() and not p.is_symlink():
        for dirpath, dirnames, filenames in os.walk(p):
            dirnames.sort()
            for name in sorted(filenames):
                fp = Path(dirpath) / name
                try:
                    s = fp.lstat()
                except FileNotFoundError:
                    continue
                out.append((str(fp.relative_to(root)), s.st_size, s.st_mtime_ns))
    else:
        out.append((rel, st.st_size, st.st_mtime_ns))
    return out


def add_beneath(tar: tarfile.TarFile, root: Path, rel: str) -> list[str]:
    """Add ``root/rel`` (recursively) to ``tar``: regular files and directories only, each opened
    beneath ``root`` without following a link (the agent may read with more rights than the
    payload that made them); returns what was left out (links, devices, FIFOs)."""
    left_out: list[str] = []
    try:
        st = os.lstat(root / rel)
    except FileNotFoundError:
        return left_out
    if stat.S_ISDIR(st.st_mode):
        _add_entry(tar, rel, st, None)
        fd = open_dir_beneath(root, Path(rel).parts)
        try:
            names = sorted(os.listdir(fd))
        finally:
            os.close(fd)
        for name in names:
            left_out.extend(add_beneath(tar, root, f"{rel}/{name}"))
    elif stat.S_ISREG(st.st_mode):
        fd = open_beneath(root, rel, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            fst = os.fstat(f.fileno())
            if not stat.S_ISREG(fst.st_mode):
                raise OSError(f"{rel} changed while being archived")
            _add_entry(tar, rel, fst, f)
    else:
        left_out.append(rel)
    return left_out


def _add_entry(tar: tarfile.TarFile, rel: str, st: os.stat_result, f: BinaryIO | None) -> None:
    info = tarfile.TarInfo(rel)
    info.mode = stat.S_IMODE(st.st_mode)
    info.mtime = int(st.st_mtime)
    if f is None:
        info.type = tarfile.DIRTYPE
    else:
        info.size = st.st_size
    tar.addfile(info, f)


class CheckpointSaver:
    """Watches ``paths`` (relative to ``workdir``) and uploads them when they change."""

    def __init__(
        self,
        workdir: Path,
        paths: list[str],
        *,
        max_bytes: int,
        scratch_dir: Path,
        upload: Callable[[Path], object],
        name_prefix: str = "checkpoint",
    ):
        self.workdir = Path(workdir)
        self.paths = [p.strip().rstrip("/") for p in paths if p.strip()]
        for p in self.paths:
            if p.startswith("/") or ".." in Path(p).parts:
                raise ValueError(f"checkpoint path {p!r} must be relative and inside the working directory")
        self.max_bytes = max_bytes
        self.scratch_dir = Path(scratch_dir)
        self.upload = upload
        self.name_prefix = name_prefix
        self.last_uploaded: Fingerprint | None = None
        self.uploads = 0
        self._warned_size = False
        self._warned_links = False

    def reset(self, baseline: Fingerprint | None = None) -> None:
        """Start a new point: nothing uploaded yet (``baseline``: what was restored, which need
        not be uploaded again until it changes)."""
        self.last_uploaded = baseline
        self._warned_size = False

    def fingerprint(self) -> Fingerprint:
        items: list[tuple[str, int, int]] = []
        for rel in self.paths:
            items.extend(_walk(self.workdir, rel))
        return tuple(items)

    def changed(self) -> bool:
        fp = self.fingerprint()
        return bool(fp) and fp != self.last_uploaded

    def make_tarball(self, dest: Path) -> Fingerprint | None:
        """Tar the current files into ``dest``; returns their fingerprint, or ``None`` when they
        changed while being read (try again later)."""
        before = self.fingerprint()
        if not before:
            return None
        total = sum(size for _, size, _ in before)
        if total > self.max_bytes:
            raise CheckpointTooLarge(
                f"checkpoint files hold {total / 2**20:.1f} MB, over the agent's limit of "
                f"{self.max_bytes / 2**20:.0f} MB (--max-checkpoint-mb)"
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        try:
            with tarfile.open(tmp, "w:gz", compresslevel=1) as tar:
                left_out: list[str] = []
                for rel in self.paths:
                    left_out.extend(add_beneath(tar, self.workdir, rel))
        except (OSError, tarfile.TarError) as e:
            log.info("checkpoint files changed while being archived (%s); retrying at the next check", e)
            tmp.unlink(missing_ok=True)
            return None
        after = self.fingerprint()
        if after != before:
            tmp.unlink(missing_ok=True)
            return None
        if tmp.stat().st_size > self.max_bytes:
            size = tmp.stat().st_size
            tmp.unlink(missing_ok=True)
            raise CheckpointTooLarge(
                f"checkpoint tarball is {size / 2**20:.1f} MB, over the agent's limit of "
                f"{self.max_bytes / 2**20:.0f} MB (--max-checkpoint-mb)"
            )
        tmp.replace(dest)
        if left_out and not self._warned_links:
            log.warning(
                "checkpoint: %d path(s) that are neither regular files nor directories left out "
                "(links are not saved): %s",
                len(left_out),
                ", ".join(left_out[:5]),
            )
            self._warned_links = True
        return before

    def save_if_changed(self) -> bool:
        """Upload the files when they changed since the last upload; True when uploaded.
        Upload errors propagate (the caller logs them and tries again at the next check)."""
        if not self.paths or not self.changed():
            return False
        dest = self.scratch_dir / f"{self.name_prefix}-{self.uploads + 1}.tar.gz"
        try:
            fp = self.make_tarball(dest)
        except CheckpointTooLarge as e:
            if not self._warned_size:
                log.warning("%s; not uploading it", e)
                self._warned_size = True
            return False
        if fp is None:
            return False
        try:
            self.upload(dest)
        finally:
            dest.unlink(missing_ok=True)
        self.last_uploaded = fp
        self.uploads += 1
        return True

    def remove_files(self) -> None:
        """Clear the checkpoint paths (before the next point of a multi-point job runs in the
        same directory, so it does not mistake the previous point's state for its own)."""
        for rel in self.paths:
            try:
                unlink_beneath(self.workdir, rel)  # no link followed: the payload may have planted one
            except OSError as e:
                log.warning("checkpoint: cannot remove %s: %s", rel, e)


def safe_extract(
    tarball: Path, dest: Path, limits: ArchiveLimits = DEFAULT_LIMITS, owner: tuple[int, int] | None = None
) -> None:
    """Unpack a tarball from the server into ``dest`` (see :func:`phpo.schemas.archives.extract`);
    :class:`~phpo.schemas.archives.ArchiveError` names the member it refuses."""
    extract(tarball, dest, limits=limits, owner=owner)


def restore_checkpoint(
    tarball: Path,
    workdir: Path,
    checkpoint_to_load: str | None,
    limits: ArchiveLimits = DEFAULT_LIMITS,
    owner: tuple[int, int] | None = None,
) -> Path:
    """Put a downloaded checkpoint where the payload expects it; returns that path. Nothing is
    written through a link in ``workdir``; an unsafe tarball raises ``ArchiveError``."""
    if checkpoint_to_load:
        parts = Path(checkpoint_to_load).parts
        if Path(checkpoint_to_load).is_absolute() or ".." in parts or not parts:
            raise ArchiveError(
                f"checkPointToLoad {checkpoint_to_load!r} must be a relative path inside the "
                "working directory"
            )
        dfd = open_dir_beneath(workdir, parts[:-1], create=True, owner=owner)
        try:  # the tarball is in the job's scratch directory: the same file system
            if owner is not None:
                os.chown(tarball, *owner)
            os.rename(tarball, parts[-1], dst_dir_fd=dfd)
        finally:
            os.close(dfd)
        return workdir / checkpoint_to_load
    try:
        extract(tarball, workdir, limits=limits, owner=owner)
    finally:
        tarball.unlink(missing_ok=True)
    return workdir
