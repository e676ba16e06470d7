"""Checkpoints: save ``checkPointToSave`` while a payload runs, bring the latest one back.

Saving: every ``checkpoint_interval_s`` the agent fingerprints the listed files and directories
(path, size, mtime of every file) and, only when that changed since the last upload, tars them
(``tar.gz``, paths relative to the working directory) and uploads the tarball as a
``checkpoint`` artifact of the point. A tarball is only uploaded when the files did not change
while it was being written, so a checkpoint caught half-written is retried at the next check
instead of being stored torn. The size limit is the agent's ``--max-checkpoint-mb``.

Restoring (``--checkPointToLoad``, docs/payloads.md): with a name, the tarball is placed under that
name for the payload to open; without, it is unpacked in place, recreating the saved paths.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

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
                for rel in self.paths:
                    if (self.workdir / rel).exists():
                        tar.add(self.workdir / rel, arcname=rel, recursive=True)
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
            p = self.workdir / rel
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def safe_extract(tarball: Path, dest: Path) -> None:
    """Unpack a tarball from the server into ``dest``; the ``data`` filter refuses absolute
    paths, ``..``, device files and links pointing outside ``dest``."""
    with tarfile.open(tarball, "r:*") as tar:
        tar.extractall(dest, filter="data")


def restore_checkpoint(tarball: Path, workdir: Path, checkpoint_to_load: str | None) -> Path:
    """Put a downloaded checkpoint where the payload expects it; returns that path."""
    if checkpoint_to_load:
        target = workdir / checkpoint_to_load
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(tarball), target)
        return target
    safe_extract(tarball, workdir)
    tarball.unlink(missing_ok=True)
    return workdir
