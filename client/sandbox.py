"""The user's sandbox: ``*.json *.py *.sh *.yaml`` of the submit directory, as a tar.gz.

Upstream ``phpo`` ships these files with the task so that every evaluation (and the steering)
finds the user's scripts in its working directory (CONTRACTS §3). Only the top directory is
taken (not recursive), hidden files are skipped (``.secrets.json`` stays home), and the total
size is capped so that a stray data file fails here, with its name, not halfway up the wire.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from .errors import PhpoError

PATTERNS = ("*.json", "*.py", "*.sh", "*.yaml")
DEFAULT_MAX_BYTES = int(float(os.environ.get("PHPO_SANDBOX_MAX_MB", "20")) * 1024 * 1024)


class SandboxTooLarge(PhpoError):
    """The sandbox files add up to more than the cap."""


def sandbox_files(directory: str | Path) -> list[Path]:
    """The files that go into the sandbox, sorted by name."""
    d = Path(directory)
    if not d.is_dir():
        raise PhpoError(f"sandbox: '{d}' is not a directory")
    found: dict[str, Path] = {}
    for pattern in PATTERNS:
        for p in d.glob(pattern):
            if p.name.startswith(".") or not p.is_file():
                continue
            found[p.name] = p
    return [found[k] for k in sorted(found)]


def build_sandbox(directory: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes | None:
    """The tar.gz of :func:`sandbox_files`, or ``None`` when there is nothing to send."""
    files = sandbox_files(directory)
    if not files:
        return None
    sizes = {p: p.stat().st_size for p in files}
    total = sum(sizes.values())
    if total > max_bytes:
        biggest = sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
        names = ", ".join(f"{p.name} ({s / 1e6:.1f} MB)" for p, s in biggest)
        raise SandboxTooLarge(
            f"sandbox: the {' '.join(PATTERNS)} files of {Path(directory).resolve()} add up to "
            f"{total / 1e6:.1f} MB, over the {max_bytes / 1e6:.1f} MB limit (largest: {names}); "
            "move data files elsewhere and give them with --trainingDS, or raise PHPO_SANDBOX_MAX_MB"
        )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in files:
            info = tar.gettarinfo(str(p.resolve()), arcname=p.name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(p, "rb") as fh:
                tar.addfile(info, fh)
    return buf.getvalue()
