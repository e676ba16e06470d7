"""The user's sandbox: the ``*.json *.py *.sh *.yaml`` files under the submit directory, as a tar.gz.

Upstream ``phpo`` ships what ``find . -name "*.json" -o -name "*.py" -o -name "*.sh" -o -name
"*.yaml"`` finds (subdirectories included, with their paths) so that every evaluation and the
steering find the user's scripts in their working directory; phpo ships the same files, plus the
files the user names (``--sandboxFiles``, whatever their suffix). Left out, and said so:

- hidden files and directories (``.git``, ``.env``, ``.secrets.json``: they stay home);
- virtual environments (a directory holding ``pyvenv.cfg``) and ``__pycache__``;
- symbolic links to directories (``find`` does not follow them either) and broken links.

A link to a file ships the file's content. The tarball holds only directories and regular files,
paths relative to the submit directory, owner root. The total size is capped
(``PHPO_SANDBOX_MAX_MB``, 20 MB) so that a stray data file fails here, with its name, not halfway
up the wire. :func:`plan_sandbox` says what would ship and what was left out, without packing.
"""

from __future__ import annotations

import fnmatch
import io
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PhpoError

PATTERNS = ("*.json", "*.py", "*.sh", "*.yaml")
DEFAULT_MAX_BYTES = int(float(os.environ.get("PHPO_SANDBOX_MAX_MB", "20")) * 1024 * 1024)
SKIPPED_DIRS = ("__pycache__",)
_SHOWN = 5  # names listed per kind of left-out file


class SandboxTooLarge(PhpoError):
    """The sandbox files add up to more than the cap."""


@dataclass
class SandboxPlan:
    """What goes into the sandbox (``files``: name in the tarball -> file on disk) and what was
    left out, by reason (reason -> names relative to the submit directory)."""

    root: Path
    files: dict[str, Path] = field(default_factory=dict)
    left_out: dict[str, list[str]] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files.values())

    def leave_out(self, reason: str, name: str) -> None:
        self.left_out.setdefault(reason, []).append(name)

    def describe_left_out(self) -> str:
        """One line per reason: ``3 hidden (.env, .git/, .secrets.json)``; empty when nothing."""
        parts = []
        for reason, names in self.left_out.items():
            shown = ", ".join(sorted(names)[:_SHOWN]) + (", ..." if len(names) > _SHOWN else "")
            parts.append(f"{len(names)} {reason} ({shown})")
        return "; ".join(parts)

    def summary(self) -> str:
        """What a user reads after submit or --noSubmit: the files, then what stayed home."""
        names = sorted(self.files)
        shown = ", ".join(names[:20]) + (f", ... ({len(names) - 20} more)" if len(names) > 20 else "")
        text = f"sandbox: {len(names)} files, {self.total_bytes / 1e3:.1f} kB from {self.root}: {shown or 'none'}"
        left = self.describe_left_out()
        if left:
            text += f"\nleft out of the sandbox: {left}; name files with --sandboxFiles to ship them"
        return text


def _matches(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pat) for pat in PATTERNS)


def _walk(plan: SandboxPlan, top: Path, prefix: str, take: bool | None) -> None:
    """Add the files under ``top`` (named ``prefix/...`` in the tarball). ``take`` None: only the
    four patterns; True: every file (a directory the user named)."""
    try:
        entries = sorted(os.scandir(top), key=lambda e: e.name)
    except OSError as e:
        raise PhpoError(f"sandbox: cannot read the directory '{top}': {e.strerror or e}") from None
    for e in entries:
        name = f"{prefix}{e.name}"
        if e.name.startswith("."):
            plan.leave_out("hidden", name + ("/" if e.is_dir() else ""))
            continue
        if e.is_symlink():
            target = Path(e.path)
            if target.is_dir():
                plan.leave_out("links to directories", name + "/")
                continue
            if not target.exists():
                plan.leave_out("broken links", name)
                continue
        if e.is_dir():
            if e.name in SKIPPED_DIRS:
                plan.leave_out("caches", name + "/")
            elif (Path(e.path) / "pyvenv.cfg").exists():
                plan.leave_out("virtual environments", name + "/")
            else:
                _walk(plan, Path(e.path), name + "/", take)
            continue
        if not e.is_file():
            plan.leave_out("special files", name)
        elif take or _matches(e.name):
            plan.files[name] = Path(e.path)
        else:
            plan.leave_out(f"other files (not {' '.join(PATTERNS)})", name)


def _tar_name(given: str, path: Path, root: Path) -> str:
    """The name of a file the user named: its path under the submit directory, else its own name."""
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        return path.name or given


def plan_sandbox(directory: str | Path, extra: Iterable[str] = ()) -> SandboxPlan:
    """What the sandbox of ``directory`` holds: the four patterns (recursively), plus ``extra``,
    files or directories named by the user (relative to ``directory``), whatever their suffix."""
    d = Path(directory)
    if not d.is_dir():
        raise PhpoError(f"sandbox: '{d}' is not a directory")
    plan = SandboxPlan(root=d.resolve())
    _walk(plan, d, "", None)
    for given in extra:
        given = given.strip()
        if not given:
            continue
        p = Path(given) if Path(given).is_absolute() else d / given
        if not p.exists():
            raise PhpoError(f"--sandboxFiles: '{given}' does not exist (relative to {plan.root})")
        name = _tar_name(given, p, plan.root)
        if p.is_dir():
            _walk(plan, p, f"{name}/" if name not in ("", ".") else "", True)
        else:
            if name in plan.files and plan.files[name].resolve() != p.resolve():
                raise PhpoError(
                    f"--sandboxFiles: '{given}' would be '{name}' in the sandbox, which already "
                    f"holds {plan.files[name]}; rename one of them"
                )
            plan.files[name] = p
        for names in plan.left_out.values():  # named explicitly: no longer left out
            if name in names:
                names.remove(name)
    plan.left_out = {k: v for k, v in plan.left_out.items() if v}
    return plan


def sandbox_files(directory: str | Path, extra: Iterable[str] = ()) -> list[Path]:
    """The files that go into the sandbox, sorted by their name in it."""
    plan = plan_sandbox(directory, extra)
    return [plan.files[k] for k in sorted(plan.files)]


def check_size(plan: SandboxPlan, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    sizes = {name: p.stat().st_size for name, p in plan.files.items()}
    total = sum(sizes.values())
    if total > max_bytes:
        biggest = sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
        names = ", ".join(f"{n} ({s / 1e6:.1f} MB)" for n, s in biggest)
        raise SandboxTooLarge(
            f"sandbox: the files of {plan.root} add up to {total / 1e6:.1f} MB, over the "
            f"{max_bytes / 1e6:.1f} MB limit (largest: {names}); move data files elsewhere and give them "
            "with --trainingDS, or raise PHPO_SANDBOX_MAX_MB"
        )


def pack(plan: SandboxPlan, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes | None:
    """The tar.gz of ``plan`` (directories, then regular files), or ``None`` when it is empty."""
    if not plan.files:
        return None
    check_size(plan, max_bytes)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        dirs = sorted({"/".join(n.split("/")[:i]) for n in plan.files for i in range(1, n.count("/") + 1)})
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name in sorted(plan.files):
            p = plan.files[name]
            st = p.stat()  # a link's target
            info = tarfile.TarInfo(name)
            info.size, info.mtime = st.st_size, int(st.st_mtime)
            info.mode = 0o755 if st.st_mode & 0o111 else 0o644
            with open(p, "rb") as fh:
                tar.addfile(info, fh)
    return buf.getvalue()


def build_sandbox(
    directory: str | Path, max_bytes: int = DEFAULT_MAX_BYTES, extra: Iterable[str] = ()
) -> bytes | None:
    """The tar.gz of :func:`plan_sandbox`, or ``None`` when there is nothing to send."""
    return pack(plan_sandbox(directory, extra), max_bytes)
