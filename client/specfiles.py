"""The files a task spec names, read on the user's side: ``searchSpaceFile``, ``segmentSpecFile``
and ``trainingDS``.

The server never sees the user's disk, so the client puts the *contents* into the spec
(``searchSpace``, ``segments``, ``trainingFiles``) and keeps the names for ``--dumpJson``. One
implementation for ``phpo submit`` and :meth:`phpo.client.Client.submit`, so the two read the
same files the same way. A problem is an :class:`InvalidInput` naming the option.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from .errors import InvalidInput


def _invalid(field: str, message: str) -> InvalidInput:
    return InvalidInput(0, "invalid_file", message, field)


def read_structured(option: str, path: str, base: Path) -> Any:
    """The JSON (or, for ``.yaml``/``.yml``, YAML) content of ``path`` relative to ``base``."""
    p = Path(path)
    if not p.is_absolute():
        p = base / p
    field = option.lstrip("-")
    try:
        text = p.read_text()
    except OSError as e:
        raise _invalid(field, f"{option}: cannot read '{path}': {e.strerror or e}") from None
    yaml_file = p.suffix in (".yaml", ".yml")
    try:
        return yaml.safe_load(text) if yaml_file else json.loads(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise _invalid(
            field, f"{option}: '{path}' is not valid {'YAML' if yaml_file else 'JSON'}: {e}"
        ) from None


def resolve_training_ds(value: str | list[str], base: Path, warn: Callable[[str], None]) -> list[str]:
    """``--trainingDS``: a directory (its files), a glob (its matches) or a comma-separated list.

    Local files become absolute paths; URLs (``scheme://...``) are kept. A name that is none of
    these (e.g. a Rucio dataset name from an upstream setup) is kept as given with a warning,
    since a site may still know it.
    """
    items = value if isinstance(value, list) else [x.strip() for x in str(value).split(",")]
    out: list[str] = []
    for item in items:
        if not item:
            continue
        if "://" in item:
            out.append(item)
            continue
        p = Path(item) if Path(item).is_absolute() else base / item
        if p.is_dir():
            files = sorted(
                str(f.resolve()) for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
            )
            if not files:
                raise _invalid("trainingDS", f"--trainingDS: the directory '{item}' holds no files")
            out.extend(files)
        elif p.is_file():
            out.append(str(p.resolve()))
        elif glob.has_magic(item):
            matches = sorted(str(Path(m).resolve()) for m in glob.glob(str(p)) if Path(m).is_file())
            if not matches:
                raise _invalid("trainingDS", f"--trainingDS: the pattern '{item}' matches no file")
            out.extend(matches)
        else:
            warn(
                f"--trainingDS: '{item}' is not a file, directory, glob or URL here; "
                "it is passed to the evaluations as it is"
            )
            out.append(item)
    return out


def resolve_spec_files(
    data: dict[str, Any], base: str | Path, warn: Callable[[str], None] = lambda m: None
) -> dict[str, Any]:
    """``data`` with the contents of the files it names, read relative to ``base``; contents
    given already (``searchSpace``, ``segments``, ``trainingFiles``) win over the file."""
    base = Path(base)
    out = dict(data)
    if out.get("searchSpaceFile") and out.get("searchSpace") is None:
        out["searchSpace"] = read_structured("--searchSpaceFile", out["searchSpaceFile"], base)
    if out.get("segmentSpecFile") and out.get("segments") is None:
        out["segments"] = read_structured("--segmentSpecFile", out["segmentSpecFile"], base)
    if out.get("trainingDS") and not out.get("trainingFiles"):
        out["trainingFiles"] = resolve_training_ds(out["trainingDS"], base, warn)
    return out
