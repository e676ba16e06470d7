"""Unpacking tar archives that come from someone else: sandboxes, checkpoints, ``mlruns/`` tarballs.

Why not ``tarfile.extractall(filter="data")``: the filter decides with ``os.path.realpath``
whether a member stays inside the destination, and on Python up to 3.11.12/3.12.10/3.13.3 a
chain of symbolic links whose resolved path exceeds ``PATH_MAX`` makes ``realpath`` stop
resolving, so a later member is written through a link outside the destination
(CVE-2025-4517). No path check can be trusted while the archive itself may create links, so
this module takes a stricter line, the same for every caller (the agent and the server):

- a member must be a regular file or a directory: symbolic links, hard links, devices and FIFOs
  are refused, naming the member;
- its name must be relative, without ``..``, NUL or backslash;
- nothing is resolved by path: every directory on the way is opened relative to the previous
  one with ``O_NOFOLLOW`` (a link already in the destination is refused, never followed), a
  file is written under a temporary name in its directory and renamed into place (an existing
  hard link is replaced, never written through), modes lose setuid/setgid/sticky and the write
  bits of group and others;
- sizes are bounded as the bytes come: the member count, each member, all members together,
  and the tar headers between two members (so a crafted pax header cannot fill memory either).

An archive refused half-way may leave the members before the bad one in the destination, never
anything outside it. Stdlib only, so the server and the agent can both import it.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import gzip
import io
import lzma
import os
import secrets
import shutil
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

HEADER_ALLOWANCE = 1 << 20  # tar/pax/GNU headers between two members (a long name is a few kB)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_COPY = 1 << 20


class ArchiveError(ValueError):
    """An archive that is refused; ``member`` names the member at fault, where there is one."""

    def __init__(self, message: str, member: str | None = None):
        super().__init__(message)
        self.member = member


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds of one extraction. ``max_skipped_bytes`` bounds the data of members a ``select``
    leaves out (read and thrown away; default: ``max_total_bytes``)."""

    max_members: int = 100_000
    max_member_bytes: int = 10 * 2**30
    max_total_bytes: int = 10 * 2**30
    max_skipped_bytes: int | None = None


DEFAULT_LIMITS = ArchiveLimits()


@dataclass
class Extracted:
    files: int = 0
    dirs: int = 0
    bytes: int = 0


# ------------------------------------------------------------------------------------ names


def member_parts(name: str) -> tuple[str, ...]:
    """The components of a member name, ``.`` and empty ones dropped; :class:`ArchiveError`
    when the name is absolute or holds ``..``, a NUL or a backslash."""
    why = None
    if name.startswith("/"):
        why = "it is absolute"
    elif "\x00" in name:
        why = "it holds a NUL character"
    elif "\\" in name:
        why = "it holds a backslash"
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if why is None and ".." in parts:
        why = "it holds '..'"
    if why:
        raise ArchiveError(
            f"unsafe member name {name!r}: {why}; members must be relative paths inside the archive",
            member=name,
        )
    return parts


def _kind(m: tarfile.TarInfo) -> str | None:
    """None for a regular file or directory, else what the member is (for the message)."""
    if m.isreg() or m.isdir():
        return None
    if m.issym():
        return f"a symbolic link (to {m.linkname!r})"
    if m.islnk():
        return f"a hard link (to {m.linkname!r})"
    if m.ischr() or m.isblk():
        return "a device file"
    if m.isfifo():
        return "a FIFO"
    return f"of tar type {m.type!r}"


# ------------------------------------------------------------------- opening without links


def _open_dir(
    parent_fd: int, name: str, *, create: bool, mode: int = 0o755, owner: tuple[int, int] | None = None
) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        if not create:
            raise
    with contextlib.suppress(FileExistsError):  # made meanwhile: opened below like any other
        os.mkdir(name, mode, dir_fd=parent_fd)
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    if owner is not None:
        os.fchown(fd, *owner)
    return fd


def open_dir_beneath(
    root: int | str | os.PathLike[str],
    parts: tuple[str, ...] | list[str],
    *,
    create: bool = False,
    owner: tuple[int, int] | None = None,
) -> int:
    """A file descriptor of the directory ``root/parts...``, every component opened with
    ``O_NOFOLLOW`` relative to the one before: a symbolic link anywhere below ``root`` raises
    ``OSError`` (ELOOP or ENOTDIR) instead of leading elsewhere. ``create`` makes missing
    directories (owned by ``owner``, when given). The caller closes the descriptor."""
    fd = os.dup(root) if isinstance(root, int) else os.open(os.fspath(root), _DIR_FLAGS & ~os.O_NOFOLLOW)
    try:
        for name in parts:
            if name in ("", ".", "..") or "/" in name:
                raise OSError(errno.EINVAL, f"not a single path component: {name!r}")
            nfd = _open_dir(fd, name, create=create, owner=owner)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _rel_parts(rel: str | os.PathLike[str]) -> list[str]:
    s = os.fspath(rel)
    parts = [p for p in s.split("/") if p not in ("", ".")]
    if s.startswith("/") or ".." in parts or not parts:
        raise OSError(errno.EINVAL, f"{s!r} is not a relative path below the directory")
    return parts


def open_beneath(
    root: str | os.PathLike[str], rel: str | os.PathLike[str], flags: int = os.O_RDONLY, mode: int = 0o644
) -> int:
    """``os.open(root/rel, flags)`` where no component of ``rel``, the last one included, may be
    a symbolic link: how a privileged process touches files in a directory someone less
    privileged controls (a payload's working directory) without being led elsewhere."""
    parts = _rel_parts(rel)
    dfd = open_dir_beneath(root, parts[:-1])
    try:
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
    finally:
        os.close(dfd)


def read_beneath(
    root: str | os.PathLike[str], rel: str | os.PathLike[str], max_bytes: int | None = None
) -> bytes:
    """The bytes of the regular file ``root/rel``, no link followed (see :func:`open_beneath`);
    ``OSError`` when it is not a regular file or holds more than ``max_bytes`` (EFBIG)."""
    fd = open_beneath(root, rel, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: a FIFO must not hang us
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(errno.EINVAL, f"{os.fspath(rel)!r} is not a regular file")
        data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:
        raise OSError(errno.EFBIG, f"{os.fspath(rel)!r} is larger than {max_bytes} bytes")
    return data


def write_beneath(
    root: str | os.PathLike[str],
    rel: str | os.PathLike[str],
    data: bytes,
    mode: int = 0o644,
    owner: tuple[int, int] | None = None,
) -> None:
    """Write ``root/rel`` whole: under a temporary name in its directory, then renamed over
    whatever was there (a link there is replaced, not followed); missing directories are made."""
    parts = _rel_parts(rel)
    dfd = open_dir_beneath(root, parts[:-1], create=True, owner=owner)
    try:
        _write_file(dfd, parts[-1], io.BytesIO(data), len(data), mode, None, owner, os.fspath(rel))
    finally:
        os.close(dfd)


def unlink_beneath(root: str | os.PathLike[str], rel: str | os.PathLike[str]) -> None:
    """Remove the file, link or directory tree ``root/rel`` (never anything a link on the way,
    or in the tree, points to); nothing there is fine."""
    parts = _rel_parts(rel)
    try:
        dfd = open_dir_beneath(root, parts[:-1])
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as e:
        if e.errno == errno.ELOOP:
            return  # a link on the way: what it points to is not ours to remove
        raise
    try:
        if stat.S_ISDIR(os.lstat(parts[-1], dir_fd=dfd).st_mode):
            shutil.rmtree(parts[-1], dir_fd=dfd)  # fd-based: it does not follow links either
        else:
            os.unlink(parts[-1], dir_fd=dfd)
    except FileNotFoundError:
        pass
    finally:
        os.close(dfd)


def _write_file(
    dfd: int,
    name: str,
    src: IO[bytes],
    size: int,
    mode: int,
    mtime: float | None,
    owner: tuple[int, int] | None,
    label: str,
) -> int:
    tmp = f".phpo-tmp-{secrets.token_hex(6)}-{name}"[:200]
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
    written = 0
    try:
        with os.fdopen(fd, "wb", closefd=False) as out:
            while written < size:
                block = src.read(min(_COPY, size - written))
                if not block:
                    break
                out.write(block)
                written += len(block)
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
        if mtime is not None:
            with contextlib.suppress(OSError, OverflowError, ValueError):  # a crafted mtime: kept as written
                os.utime(fd, (mtime, mtime))
        os.close(fd)
        fd = -1
        try:
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except IsADirectoryError:
            raise ArchiveError(
                f"member {label!r}: a directory of that name is already there", member=label
            ) from None
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        raise
    return written


# ---------------------------------------------------------------------------- extracting


class _Budget:
    """The decompressed stream, counted: at most ``limit`` bytes may be read (the extractor
    raises the limit by each member's data as it accepts the member)."""

    def __init__(self, f: IO[bytes]):
        self.f = f
        self.consumed = 0
        self.limit = HEADER_ALLOWANCE

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n if n is not None and n >= 0 else _COPY)
        self.consumed += len(data)
        if self.consumed > self.limit:
            raise ArchiveError(
                f"the archive has more than {HEADER_ALLOWANCE} bytes of tar headers between "
                "two members (a crafted header?)"
            )
        return data


def _decompressed(raw: IO[bytes]) -> IO[bytes]:
    head = raw.read(6)
    raw.seek(0)
    if head[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if head[:3] == b"BZh":
        return bz2.BZ2File(raw)
    if head == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(raw)
    return raw


Select = Callable[[tuple[str, ...], tarfile.TarInfo], "tuple[str, ...] | None"]


def extract(
    tarball: str | os.PathLike[str] | IO[bytes],
    dest: str | os.PathLike[str],
    *,
    limits: ArchiveLimits = DEFAULT_LIMITS,
    select: Select | None = None,
    skip_other: bool = False,
    owner: tuple[int, int] | None = None,
) -> Extracted:
    """Unpack the tar archive ``tarball`` (a path or a seekable binary file; plain, gzip, bzip2
    or xz) member by member into the existing directory ``dest``; raises :class:`ArchiveError`
    naming the member at fault.

    ``select(parts, member)`` may rename a member (return the parts to write under ``dest``) or
    leave it out (None); every member's name is checked before. ``skip_other`` leaves out links,
    devices and FIFOs instead of refusing the archive. ``owner``: (uid, gid) of what is made.
    """
    skipped_limit = limits.max_total_bytes if limits.max_skipped_bytes is None else limits.max_skipped_bytes
    done = Extracted()
    skipped = members = 0
    root_fd = os.open(os.fspath(dest), _DIR_FLAGS & ~os.O_NOFOLLOW)
    cache: tuple[tuple[str, ...], int] | None = None  # the last member's directory, kept open
    try:
        raw_cm = contextlib.nullcontext(tarball) if hasattr(tarball, "read") else open(tarball, "rb")  # noqa: SIM115
        with raw_cm as raw, _decompressed(raw) as plain:
            budget = _Budget(plain)
            try:
                tar = tarfile.open(fileobj=budget, mode="r|")  # noqa: SIM115 - closed by the with below
            except (tarfile.TarError, EOFError, OSError, lzma.LZMAError, ValueError) as e:
                if isinstance(e, ArchiveError):
                    raise
                raise ArchiveError(f"not a readable tar archive: {e}") from None
            with tar:
                it = iter(tar)
                while True:
                    try:
                        m = next(it)
                    except StopIteration:
                        break
                    except (tarfile.TarError, EOFError, OSError, lzma.LZMAError) as e:
                        raise ArchiveError(f"the archive is damaged after {members} members: {e}") from None
                    members += 1
                    if members > limits.max_members:
                        raise ArchiveError(
                            f"the archive has more than {limits.max_members} members", member=m.name
                        )
                    parts = member_parts(m.name)
                    what = _kind(m)
                    if what is not None and not skip_other:
                        raise ArchiveError(
                            f"member {m.name!r} is {what}: archives may hold only regular files "
                            "and directories",
                            member=m.name,
                        )
                    size = m.size if m.isreg() else 0
                    budget.limit = (
                        budget.consumed
                        + tarfile.BLOCKSIZE * -(-size // tarfile.BLOCKSIZE)
                        + HEADER_ALLOWANCE
                        + tarfile.RECORDSIZE
                    )
                    target = parts if what is None and parts else None
                    if target is not None and select is not None:
                        target = select(parts, m)
                    if not target:
                        skipped += size
                        if skipped > skipped_limit:
                            raise ArchiveError(
                                f"the archive holds more than {skipped_limit} bytes besides what is unpacked",
                                member=m.name,
                            )
                        continue
                    if size > limits.max_member_bytes:
                        raise ArchiveError(
                            f"member {m.name!r} is {size} bytes, over the limit of "
                            f"{limits.max_member_bytes} bytes per member",
                            member=m.name,
                        )
                    if done.bytes + size > limits.max_total_bytes:
                        raise ArchiveError(
                            f"the archive unpacks to more than {limits.max_total_bytes} bytes "
                            f"(at member {m.name!r})",
                            member=m.name,
                        )
                    dirs = target if m.isdir() else target[:-1]
                    try:
                        if cache is None or cache[0] != dirs:
                            fd = open_dir_beneath(root_fd, dirs, create=True, owner=owner)
                            if cache is not None:
                                os.close(cache[1])
                            cache = (dirs, fd)
                        if m.isdir():
                            done.dirs += 1
                            continue
                        src = tar.extractfile(m)
                        assert src is not None  # a regular member always has a file object
                        mode = (m.mode & 0o755) | 0o600
                        n = _write_file(cache[1], target[-1], src, size, mode, m.mtime, owner, m.name)
                    except ArchiveError:
                        raise
                    except (tarfile.TarError, EOFError, lzma.LZMAError) as e:
                        raise ArchiveError(
                            f"the archive is damaged at member {m.name!r}: {e}", member=m.name
                        ) from None
                    except OSError as e:
                        if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST):
                            raise ArchiveError(
                                f"member {m.name!r}: a symbolic link or a file is in its way in "
                                "the destination; nothing is written through links",
                                member=m.name,
                            ) from None
                        if e.errno == errno.ENAMETOOLONG:
                            raise ArchiveError(
                                f"member {m.name!r}: a name is too long", member=m.name
                            ) from None
                        raise
                    if n != size:
                        raise ArchiveError(f"the archive ends inside member {m.name!r}", member=m.name)
                    done.files += 1
                    done.bytes += size
    finally:
        if cache is not None:
            os.close(cache[1])
        os.close(root_fd)
    return done
