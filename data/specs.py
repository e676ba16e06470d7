"""Specs: one pass over all files giving what chunk creation needs to know beforehand.

The content is MLaaS4HEP's (``fkeys``, ``jkeys``, ``jdim``, ``minv``, ``maxv``, ``nans``) plus
``nan_counts`` (NaN values per branch), ``nevts`` (events per file), ``mean`` and ``std`` (for
standard normalisation), ``skipped`` (columns that are not numbers, with why) and
``fingerprint`` (each file's size, modification time and content digest: a SHA-256 of its
first and last MiB). A specs JSON file written by MLaaS4HEP (no fingerprint) can be given as it is.

:func:`load_or_compute` keeps specs in a cache directory under a key made of the files' names,
sizes and mtimes and the reading options: the same files give the cached specs, a file that
changed (or a store that cannot tell its mtime) gives a fresh pass, never stale specs. Specs
made on another machine (``shared-<content key>.json`` in the cache directory, put there by the
agent from the task's ``specs`` artifacts) are used when the files' names, sizes and content
digests are theirs: mtimes are not comparable between machines.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from phpo.schemas.data_specs import DIGEST_EDGE, content_key, specs_content_key
from phpo.schemas.data_specs import default_cache_dir as default_cache_dir  # re-exported

from .errors import DataError
from .readers import FLAT, JAGGED, file_stat, is_url, open_reader, select

SPECS_VERSION = 1
DEFAULT_CHUNK = 100_000


@dataclass
class Specs:
    fkeys: list[str]
    jkeys: list[str]
    jdim: dict[str, int]
    minv: dict[str, float]
    maxv: dict[str, float]
    nans: dict[str, float]
    nan_counts: dict[str, int]
    mean: dict[str, float]
    std: dict[str, float]
    nevts: dict[str, int]
    skipped: dict[str, str] = field(default_factory=dict)
    fingerprint: list[list[Any]] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    version: int = SPECS_VERSION

    @property
    def total_events(self) -> int:
        return int(sum(self.nevts.values()))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Specs:
        """Ours, or MLaaS4HEP's (which lacks the extra keys: they get neutral values)."""
        try:
            fkeys, jkeys = list(d["fkeys"]), list(d["jkeys"])
            minv, maxv = dict(d["minv"]), dict(d["maxv"])
        except KeyError as e:
            raise DataError(f"specs: the key {e} is missing (need fkeys, jkeys, jdim, minv, maxv)") from None
        return cls(
            fkeys=fkeys,
            jkeys=jkeys,
            jdim={k: int(v) for k, v in d.get("jdim", {}).items()},
            minv=minv,
            maxv=maxv,
            nans=dict(d.get("nans", {})),
            # absent (MLaaS4HEP's specs): unknown, so chunks look for NaN values in every branch
            nan_counts={k: int(v) for k, v in d.get("nan_counts", {}).items()},
            mean=dict(d.get("mean", {})),
            std=dict(d.get("std", {})),
            nevts={k: int(v) for k, v in d.get("nevts", {}).items()},
            skipped=dict(d.get("skipped", {})),
            fingerprint=d.get("fingerprint"),
            options=dict(d.get("options", {})),
            version=int(d.get("version", 0)),
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Specs:
        try:
            with open(path) as f:
                return cls.from_dict(json.load(f))
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read the specs file: {e}", str(path)) from e

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Written whole or not at all (a temporary file renamed)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(self.to_json())
        os.replace(tmp, path)
        return path


class _Acc:
    """Running min/max/NaN count/sum/sum of squares of one branch."""

    __slots__ = ("lo", "hi", "nan", "n", "s", "ss", "jdim")

    def __init__(self) -> None:
        self.lo, self.hi, self.nan, self.n, self.s, self.ss, self.jdim = (
            math.inf,
            -math.inf,
            0,
            0,
            0.0,
            0.0,
            0,
        )

    def add(self, x: np.ndarray) -> None:
        if x.size == 0:
            return
        if x.dtype == np.bool_:
            x = x.view(np.uint8)
        if x.dtype.kind == "f":
            nan = int(np.count_nonzero(np.isnan(x)))
            if nan:
                self.nan += nan
                x = x[~np.isnan(x)]
                if x.size == 0:
                    return
        self.lo = min(self.lo, float(np.min(x)))
        self.hi = max(self.hi, float(np.max(x)))
        x64 = x.astype(np.float64, copy=False)
        self.n += x.size
        self.s += float(np.sum(x64))
        self.ss += float(np.dot(x64, x64))


def flat_content(ak, arr) -> np.ndarray:
    """The numbers of a (possibly jagged) column as one numpy array, without a copy where the
    layout allows."""
    if arr.ndim == 1:
        return np.asarray(ak.to_numpy(arr))
    return np.asarray(ak.to_numpy(ak.flatten(arr, axis=1)))


def compute_specs(
    files: Sequence[str],
    tree: str | None = None,
    branches: Sequence[str] | None = None,
    exclude_branches: Sequence[str] | None = None,
    identifier: Sequence[str] | None = None,
    label_branch: str | None = None,
    nevts: int = -1,
    chunk_size: int = DEFAULT_CHUNK,
    redirector: str | None = None,
    readers: dict[str, Any] | None = None,
) -> Specs:
    """One pass over ``files`` (``nevts`` events of each, -1: all) in chunks of ``chunk_size``
    events. Identifier and label branches are read for nothing here and are not features.
    ``readers``: files already open (by name), used and left open."""
    import awkward as ak

    if not files:
        raise DataError("no input files")
    accs: dict[str, _Acc] = {}
    kinds: dict[str, str] = {}
    counts: dict[str, int] = {}
    skipped: dict[str, str] = {}
    fingerprint = []
    not_features = set(identifier or ()) | ({label_branch} if label_branch else set())
    for path in files:
        try:
            size, mtime = file_stat(path)
        except (OSError, ValueError, ImportError):  # e.g. a /store/ name read through the redirector
            size = mtime = None
        try:
            digest = content_digest(path, size, mtime) if size is not None else None
        except (OSError, ValueError, ImportError):  # then these specs are not shared between machines
            digest = None
        fingerprint.append([path, size, mtime, digest])
        own = not (readers and path in readers)
        r = open_reader(path, tree=tree, redirector=redirector) if own else readers[path]
        try:
            r.check(branches)
            for n in branches or ():
                if n in r.skipped:
                    raise DataError(f"cannot be used: {r.skipped[n]}", path, n)
            if label_branch:
                r.check([label_branch])
            names = [n for n in select(r.columns, branches, exclude_branches) if n not in not_features]
            if not names:
                raise DataError("no numeric branch left after --branches/--exclude-branches", path)
            if not kinds:
                kinds = {n: r.columns[n] for n in names}
                skipped = {
                    n: why
                    for n, why in r.skipped.items()
                    if n not in not_features and select([n], branches, exclude_branches)
                }
            for n in [k for k in kinds if k not in r.columns]:
                # a pattern matched it in an earlier file only (an exact name was checked above)
                skipped[n] = f"not in every file (missing in {path})"
                del kinds[n], accs[n]
            if not kinds:
                raise DataError("no branch in common with the earlier files", path)
            accs = accs or {n: _Acc() for n in kinds}
            names = list(kinds)
            n_file = r.num_events if nevts is None or nevts < 0 else min(nevts, r.num_events)
            for start in range(0, n_file, chunk_size):
                stop = min(n_file, start + chunk_size)
                arrays = r.read(names, start, stop)
                for n in names:
                    arr = arrays[n]
                    acc = accs[n]
                    if kinds[n] == JAGGED:
                        num = np.asarray(ak.num(arr, axis=1))
                        if num.size:
                            acc.jdim = max(acc.jdim, int(num.max()))
                    acc.add(flat_content(ak, arr))
            counts[path] = n_file
        finally:
            if own:
                r.close()
    fkeys = sorted(n for n, k in kinds.items() if k == FLAT)
    jkeys = sorted(n for n, k in kinds.items() if k == JAGGED)
    minv, maxv, mean, std, nans = {}, {}, {}, {}, {}
    for n, a in accs.items():
        lo, hi = (a.lo, a.hi) if a.n else (0.0, 0.0)
        minv[n], maxv[n] = lo, hi
        m = a.s / a.n if a.n else 0.0
        mean[n] = m
        std[n] = math.sqrt(max(0.0, a.ss / a.n - m * m)) if a.n else 0.0
        nans[n] = (0.0 - lo) / (hi - lo) if hi != lo else 0.0  # MLaaS4HEP: 0 in the normalised space
    return Specs(
        fkeys=fkeys,
        jkeys=jkeys,
        jdim={n: accs[n].jdim for n in jkeys},
        minv=minv,
        maxv=maxv,
        nans=nans,
        nan_counts={n: a.nan for n, a in accs.items()},
        mean=mean,
        std=std,
        nevts=counts,
        skipped=skipped,
        fingerprint=fingerprint,
        options={
            "tree": tree,
            "branches": list(branches or []),
            "exclude_branches": list(exclude_branches or []),
            "identifier": list(identifier or []),
            "label_branch": label_branch,
            "nevts": nevts,
            "redirector": redirector,
        },
    )


_digests: dict[tuple[str, int, float | None], str] = {}


def content_digest(path: str, size: int, mtime: float | None) -> str:
    """SHA-256 of the first and last :data:`DIGEST_EDGE` bytes of a file (of all of it when it is
    smaller than twice that): cheap even for a remote multi-GB file, and what tells specs made
    on another machine apply here. Kept per (file, size, mtime) for the life of the process."""
    memo = (path, size, mtime)
    if mtime is not None and memo in _digests:
        return _digests[memo]
    if is_url(path):
        import fsspec

        opener = fsspec.open(path, "rb")
    else:
        opener = open(path.removeprefix("file://"), "rb")  # noqa: SIM115 - closed by the with below
    h = hashlib.sha256()
    with opener as f:
        h.update(f.read(DIGEST_EDGE))
        if size > 2 * DIGEST_EDGE:
            f.seek(size - DIGEST_EDGE)
        h.update(f.read(DIGEST_EDGE if size > 2 * DIGEST_EDGE else size))
    digest = h.hexdigest()
    if mtime is not None:
        _digests[memo] = digest
    return digest


def fingerprint_of(files: Sequence[str]) -> list[list[Any]] | None:
    """``[[file, size, mtime], ...]``, or ``None`` when a file's mtime cannot be known."""
    out = []
    for f in files:
        try:
            size, mtime = file_stat(f)
        except (OSError, ValueError, ImportError):
            return None
        if mtime is None:
            return None
        out.append([f, size, mtime])
    return out


def cache_key(files: Sequence[str], options: dict[str, Any]) -> str | None:
    fp = fingerprint_of(files)
    if fp is None:
        return None
    blob = json.dumps({"v": SPECS_VERSION, "files": fp, "options": options}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def is_current(specs: Specs, files: Sequence[str]) -> bool:
    """False when one of ``files`` is in the specs' fingerprint with another size or mtime than
    it has now (the specs are stale). Specs of other files (a training set's, applied to test
    files) and specs without a fingerprint (MLaaS4HEP's) are taken as given."""
    if specs.fingerprint is None:
        return True
    then = {e[0]: (e[1], e[2]) for e in specs.fingerprint}
    for f in files:
        if f in then:
            try:
                now = file_stat(f)
            except (OSError, ValueError, ImportError):
                return False
            if tuple(now) != tuple(then[f]) or now[1] is None:
                return False
    return True


@contextlib.contextmanager
def _locked(path: Path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def shared_specs(files: Sequence[str], cache: Path, options: dict[str, Any]) -> Specs | None:
    """The specs another machine made for these files (``shared-<content key>.json`` in
    ``cache``), when their names, sizes and content digests are the files' now."""
    try:
        entries = [
            [f, size, mtime, content_digest(f, size, mtime)]
            for f, (size, mtime) in ((f, file_stat(f)) for f in files)
        ]
    except (OSError, ValueError, ImportError):
        return None
    key = content_key(entries, options)
    path = cache / f"shared-{key}.json"
    if key is None or not path.exists():
        return None
    try:
        specs = Specs.load(path)
    except DataError:
        return None
    # the name is only a claim: the content must say the same files and options
    if specs_content_key(asdict(specs)) != key:
        return None
    specs.fingerprint = entries  # this machine's mtimes, so its own cache entry stays current
    return specs


def load_or_compute(
    files: Sequence[str],
    cache_dir: str | os.PathLike[str] | None,
    readers: dict[str, Any] | None = None,
    **options: Any,
) -> tuple[Specs, str]:
    """Specs for ``files`` and where they came from: ``"cache"`` (this machine made them),
    ``"shared"`` (another machine made them: the task's specs artifact) or ``"computed"``.
    Concurrent callers with the same files (the jobs of one task on one machine) wait on a lock,
    so one computes and the others read its result."""
    files = list(files)
    key_opts = {
        k: options.get(k)
        for k in ("tree", "branches", "exclude_branches", "identifier", "label_branch", "nevts", "redirector")
    }
    key = cache_key(files, key_opts) if cache_dir is not None else None
    if key is None:
        return compute_specs(files, readers=readers, **options), "computed"
    cache = Path(cache_dir)
    path = cache / f"specs-{key}.json"
    with _locked(cache / f"specs-{key}.lock"):
        if path.exists():
            try:
                specs = Specs.load(path)
                if is_current(specs, files):
                    return specs, "cache"
            except DataError:
                pass  # a damaged cache entry is recomputed
        specs = shared_specs(files, cache, key_opts)
        if specs is not None:
            specs.save(path)
            return specs, "shared"
        specs = compute_specs(files, readers=readers, **options)
        specs.save(path)
        return specs, "computed"
