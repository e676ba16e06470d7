"""What the server, the agent and :mod:`phpo.data` agree on about shared specs files.

A task's specs (the result of :mod:`phpo.data`'s one pass over its training files) are kept as
artifacts of kind ``specs`` so that every job of the task, on any machine, uses one pass. Such a
file is named ``specs-<content key>.json``: the key is made of the files' names, sizes and a
SHA-256 of the first and last MiB of each (the whole file when it is smaller than 2 MiB) and of
the reading options, so specs made on one machine are used on another only for files with the
same names, sizes and head and tail bytes, whatever their modification times there.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SPECS_MAX_BYTES = 8 * 1024 * 1024
"""Largest specs artifact the server takes (a specs file of thousands of branches is ~1 MB)."""

SPECS_NAME = re.compile(r"specs-[0-9a-f]{32}\.json")
"""The name of a shared specs artifact: ``specs-`` and its content key."""

DIGEST_EDGE = 1 << 20
"""Bytes hashed at each end of a file for its content digest."""

KEY_VERSION = 1

ENV_CACHE = "PHPO_DATA_CACHE"


def default_cache_dir() -> Path:
    """Where specs are cached: ``PHPO_DATA_CACHE`` (which the agent sets for its payloads), else
    ``$XDG_CACHE_HOME/phpo/data``, else ``~/.cache/phpo/data``. Every job on the machine that
    reads the same files shares it."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "phpo" / "data"


def key_options(options: dict[str, Any]) -> dict[str, Any]:
    """The reading options that change specs, in one canonical form (``None`` and ``[]`` alike,
    a negative ``nevts`` is -1)."""
    nevts = options.get("nevts")
    return {
        "tree": options.get("tree"),
        "branches": list(options.get("branches") or []),
        "exclude_branches": list(options.get("exclude_branches") or []),
        "identifier": list(options.get("identifier") or []),
        "label_branch": options.get("label_branch"),
        "nevts": -1 if nevts is None or int(nevts) < 0 else int(nevts),
        "redirector": options.get("redirector"),
    }


def content_key(entries: Sequence[Sequence[Any]], options: dict[str, Any]) -> str | None:
    """The content key of specs of the files ``entries`` (``[name, size, mtime, digest]`` each,
    as in a specs fingerprint) read with ``options``; ``None`` when a file's size or digest is
    unknown (such specs are not shared)."""
    files = []
    for e in entries:
        if len(e) < 4 or e[1] is None or not e[3]:
            return None
        files.append([str(e[0]), int(e[1]), str(e[3])])
    if not files:
        return None
    blob = json.dumps({"v": KEY_VERSION, "files": files, "options": key_options(options)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def specs_content_key(specs: dict[str, Any]) -> str | None:
    """The content key of a specs file's JSON content (its ``fingerprint`` and ``options``)."""
    fp = specs.get("fingerprint")
    opts = specs.get("options")
    if not isinstance(fp, list) or not isinstance(opts, dict) or not all(isinstance(e, list) for e in fp):
        return None
    return content_key(fp, opts)


def shared_specs_name(key: str) -> str:
    return f"specs-{key}.json"
