"""The artifact store: a local directory by default, any fsspec URL (S3, XRootD, ...) when
configured. The database keeps only metadata and checksums (ARCHITECTURE "Storage")."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import IO

import fsspec

from ..errors import TooLarge

CHUNK = 1 << 20
_SAFE = re.compile(r"[^A-Za-z0-9._+\-=]+")


class ArtifactStore:
    def __init__(self, url: str):
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.fs.makedirs(self.root, exist_ok=True)

    def new_path(self, kind: str, name: str) -> str:
        """A fresh relative path; names are never reused, so a retried upload cannot clobber."""
        safe = _SAFE.sub("_", name)[-150:] or "artifact"
        day = datetime.now(UTC).strftime("%Y/%m/%d")
        return f"{kind}/{day}/{uuid.uuid4().hex}-{safe}"

    def _full(self, rel: str) -> str:
        return f"{self.root.rstrip('/')}/{rel}"

    async def write_stream(self, rel: str, chunks: AsyncIterator[bytes], limit: int) -> tuple[int, str]:
        """Write ``chunks`` to ``rel``; returns (size, sha256). Over ``limit`` bytes: the partial
        file is removed and :class:`TooLarge` raised, so nothing is stored."""
        full = self._full(rel)
        self.fs.makedirs(full.rsplit("/", 1)[0], exist_ok=True)
        h = hashlib.sha256()
        size = 0
        f: IO[bytes] = self.fs.open(full, "wb")
        try:
            async for chunk in chunks:
                if not chunk:
                    continue
                size += len(chunk)
                if size > limit:
                    raise TooLarge(
                        f"the upload is larger than the server's limit of {limit / 1048576:g} MB "
                        "(phpo server --max-upload-mb)",
                        field="body",
                    )
                h.update(chunk)
                f.write(chunk)
            f.close()
        except BaseException:
            f.close()
            self.delete(rel)
            raise
        return size, h.hexdigest()

    @property
    def is_local(self) -> bool:
        protocol = self.fs.protocol
        return bool({"file", "local"} & set((protocol,) if isinstance(protocol, str) else protocol))

    def open_stream(self, rel: str) -> Iterator[bytes]:
        """The file's chunks; the file is opened here, so a missing one raises
        ``FileNotFoundError`` now (and the caller can answer 404), not half-way through a response."""
        f = self.fs.open(self._full(rel), "rb")

        def chunks() -> Iterator[bytes]:
            with f:
                while chunk := f.read(CHUNK):
                    yield chunk

        return chunks()

    def open_read(self, rel: str) -> Iterator[bytes]:
        with self.fs.open(self._full(rel), "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk

    def delete(self, rel: str) -> None:
        try:
            self.fs.rm(self._full(rel))
        except (FileNotFoundError, OSError):
            pass
