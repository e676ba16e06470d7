"""What ``/health`` reports: the database and the artifact store as they are, not as they were.

A SQLite database whose file (or whole data directory) is removed under a running server keeps
answering, from the deleted file it still holds open, and everything written from then on is
gone at the next start; an artifact directory removed or unmounted loses every upload the same
way. So the probe remembers, at start, which file and directory it serves (device and inode),
and every check compares: gone or replaced is a problem, named, and ``/health`` answers 503.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import make_url

from ..db.engine import Database
from ..repositories.health import ping
from .artifact_store import ArtifactStore


def _ident(path: Path | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _still_there(
    path: Path, seen: tuple[int, int] | None, what: str, if_removed: str
) -> tuple[tuple[int, int] | None, list[str]]:
    """(what ``path`` is to be from now on, the problem when it is gone or another file now)."""
    now = _ident(path)
    seen = seen or now  # the database file is made by the first migration, after the probe
    if now is None:
        return seen, [f"{what} was removed while the server runs: {if_removed}"]
    if now != seen:
        return seen, [
            f"{what} was replaced while the server runs (the server still uses the old one); restart it"
        ]
    return seen, []


class HealthProbe:
    def __init__(self, db: Database, store: ArtifactStore):
        self.db = db
        self.store = store
        name = make_url(db.url).database if db.is_sqlite else None
        self.db_file = Path(name).expanduser().resolve() if name and name != ":memory:" else None
        self.db_ident = _ident(self.db_file)
        self.store_dir = Path(store.root) if store.is_local else None
        self.store_ident = _ident(self.store_dir)

    def problems(self) -> list[str]:
        """Each problem as a sentence naming the path and what to do; empty when all is well."""
        out: list[str] = []
        try:
            with self.db.read() as s:
                ping(s)
        except Exception as e:  # noqa: BLE001 - whatever it is, the database is not usable
            out.append(f"the database does not answer: {type(e).__name__}: {str(e)[:300]}")
        if self.db_file is not None:
            self.db_ident, problem = _still_there(
                self.db_file,
                self.db_ident,
                f"the SQLite database file {self.db_file}",
                "what it writes now is lost when it stops; restore the data directory and restart the server",
            )
            out += problem
        if self.store_dir is not None:
            self.store_ident, problem = _still_there(
                self.store_dir,
                self.store_ident,
                f"the artifact directory {self.store_dir}",
                "uploads fail or are lost; restore it and restart the server",
            )
            out += problem
            if not problem and not os.access(self.store_dir, os.W_OK | os.X_OK):
                out.append(f"the artifact directory {self.store_dir} is not writable by the server")
        else:
            try:
                if not self.store.fs.exists(self.store.root):
                    out.append(
                        f"the artifact store {self.store.url} has no root {self.store.root!r} any more"
                    )
            except Exception as e:  # noqa: BLE001
                out.append(
                    f"the artifact store {self.store.url} does not answer: {type(e).__name__}: {str(e)[:300]}"
                )
        return out
