"""The one exception of :mod:`phpo.data`: its message names the file and, where one is to blame,
the branch (or column)."""

from __future__ import annotations


class DataError(Exception):
    """A file that cannot be read as asked: missing, truncated, empty, no such tree or branch,
    a branch of a type that cannot become numbers. ``file`` and ``branch`` are kept as attributes
    for callers that want them; the message always carries them."""

    def __init__(self, message: str, file: str | None = None, branch: str | None = None):
        self.message = message
        self.file = file
        self.branch = branch
        where = []
        if file is not None:
            where.append(f"file '{file}'")
        if branch is not None:
            where.append(f"branch '{branch}'")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)

    def __reduce__(self):  # pickled whole (from a data worker process): file and branch kept
        return type(self), (self.message, self.file, self.branch)
