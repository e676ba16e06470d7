"""Readers: ROOT (uproot 5), Parquet (pyarrow), CSV and JSON lines behind one interface.

A reader knows a file's events and numeric columns and hands out any range of events as a dict
``{name: awkward array}``: a *flat* column is one number per event, a *jagged* one a list of
numbers per event (muons, jets). Columns that cannot become numbers (strings, nested objects)
are listed in :attr:`Reader.skipped` with the reason, never dropped without a word.

    r = open_reader("HZZ.root", tree="events")
    r.num_events, r.columns            # {'NJet': 'flat', 'Jet_Px': 'jagged', ...}
    arrays = r.read(["Jet_Px", "MET_px"], 0, 1000)

Where a file lives: a local path; ``root://host//path`` (XRootD, through fsspec-xrootd where it
is installed, else uproot's own XRootD bindings); any fsspec URL (``https://``, ``s3://``, ...);
or, as MLaaS4HEP does, a CMS logical file name (``/store/...``) that is not a local file, read
through ``redirector``.
"""

from __future__ import annotations

import fnmatch
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .errors import DataError

FLAT, JAGGED = "flat", "jagged"
ROOT_SUFFIXES = (".root",)
PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".csv.gz")
JSON_SUFFIXES = (".json", ".jsonl", ".ndjson", ".json.gz", ".jsonl.gz")


def resolve(path: str, redirector: str | None = None) -> str:
    """MLaaS4HEP's rule: a ``/store/...`` name that is not a local file goes through the XRootD
    redirector (``root://cms-xrd-global.cern.ch`` there)."""
    if redirector and path.startswith("/store/") and not os.path.exists(path):
        return redirector.rstrip("/") + "/" + path
    return path


def is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def file_stat(path: str) -> tuple[int, float | None]:
    """(size, mtime) of a local file or an fsspec URL; mtime is ``None`` where the store does
    not say (then nothing about the file may be cached)."""
    if not is_url(path):
        st = os.stat(path.removeprefix("file://"))
        return st.st_size, st.st_mtime_ns / 1e9
    import fsspec

    fs, p = fsspec.core.url_to_fs(path)
    info = fs.info(p)
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    if hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    return int(info.get("size") or 0), (float(mtime) if mtime is not None else None)


def select(names: Iterable[str], branches: Sequence[str] | None, exclude: Sequence[str] | None) -> list[str]:
    """The names matching ``branches`` (names or glob patterns; all when empty) and no pattern
    of ``exclude``, in file order."""
    names = list(names)
    keep = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in branches)] if branches else names
    if exclude:
        keep = [n for n in keep if not any(fnmatch.fnmatchcase(n, p) for p in exclude)]
    return keep


def _exact_missing(names: Sequence[str], wanted: Sequence[str] | None) -> list[str]:
    have = set(names)
    return [w for w in (wanted or []) if not any(c in w for c in "*?[") and w not in have]


class Reader(ABC):
    """One file. ``columns`` maps each numeric column to :data:`FLAT` or :data:`JAGGED`;
    ``skipped`` maps the other columns to why they cannot be used."""

    path: str
    columns: dict[str, str]
    skipped: dict[str, str]

    @property
    @abstractmethod
    def num_events(self) -> int: ...

    @abstractmethod
    def _read(self, names: list[str], start: int, stop: int) -> dict[str, Any]: ...

    def read(self, names: Sequence[str], start: int = 0, stop: int | None = None) -> dict[str, Any]:
        """Events ``[start, stop)`` of the named columns as awkward arrays. A name the file
        lacks is a :class:`DataError` naming the file and the column."""
        import awkward as ak

        names = list(names)
        for n in names:
            if n not in self.columns:
                why = self.skipped.get(n)
                raise DataError(
                    f"cannot be used: {why}"
                    if why
                    else f"no such branch (the file has {_some(list(self.columns) + list(self.skipped))})",
                    self.path,
                    n,
                )
        stop = self.num_events if stop is None else min(stop, self.num_events)
        start = max(0, min(start, stop))
        out = self._read(names, start, stop)
        return {n: _plain(ak, out[n]) for n in names}

    def check(self, names: Sequence[str] | None) -> None:
        """A :class:`DataError` for the first exactly named column the file does not have."""
        for n in _exact_missing(list(self.columns) + list(self.skipped), names):
            raise DataError(f"no such branch (the file has {_some(list(self.columns))})", self.path, n)

    def close(self) -> None:  # noqa: B027 - optional
        pass


def _some(names: list[str], k: int = 8) -> str:
    if not names:
        return "no columns"
    s = ", ".join(names[:k])
    return s + (f", ... ({len(names)} in all)" if len(names) > k else "")


def _plain(ak, arr):
    """Options (Arrow's nulls) become NaN so every column is plain numbers or lists of them."""
    if isinstance(arr, np.ndarray):
        return arr
    if "?" in str(arr.type.content if hasattr(arr.type, "content") else arr.type):
        arr = ak.fill_none(arr, np.nan, axis=-1)
    return arr


# --- ROOT ------------------------------------------------------------------------------------


class RootReader(Reader):
    """A TTree read with uproot 5. ``tree`` ``None``: the file's only TTree, else ``Events``
    (MLaaS4HEP's default ``--branch``)."""

    def __init__(self, path: str, tree: str | None = None, redirector: str | None = None):
        import uproot

        self.path = resolve(path, redirector)
        self._uproot = uproot
        self.tree_name = tree
        self._pid = None
        self._open()
        self.columns, self.skipped = {}, {}
        if self._rntuple:
            empty = self._tree.arrays(entry_stop=0)
            for name in empty.fields:
                kind, why = _ak_kind(empty[name].type.content)
                if kind:
                    self.columns[name] = kind
                else:
                    self.skipped[name] = why
            return
        for name, br in self._tree.iteritems(recursive=True):
            kind, why = _root_kind(uproot, br)
            if kind:
                self.columns[name] = kind
            elif not br.branches:  # a parent of subbranches is not a column itself
                self.skipped[name] = why

    def _open(self) -> None:
        uproot = self._uproot
        path = self.path
        if not is_url(path):
            p = path.removeprefix("file://")
            if not os.path.exists(p):
                raise DataError("no such file", path)
            if os.path.getsize(p) == 0:
                raise DataError("the file is empty (0 bytes), not a ROOT file", path)
        kw: dict[str, Any] = {"object_cache": None, "array_cache": None}
        if is_url(path) and not path.startswith("root://"):
            kw["handler"] = uproot.source.fsspec.FSSpecSource
        elif path.startswith("root://"):
            try:
                import fsspec_xrootd  # noqa: F401

                kw["handler"] = uproot.source.fsspec.FSSpecSource
            except ImportError:
                pass  # uproot's own XRootD bindings, which say what to install when absent
        try:
            self._file = uproot.open(path, **kw)
        except Exception as e:  # uproot raises many kinds for a damaged file
            raise DataError(f"cannot open as a ROOT file: {type(e).__name__}: {e}", path) from e
        classes = {
            k.split(";")[0]: c
            for k, c in self._file.classnames().items()
            if c in ("TTree", "TNtuple", "ROOT::RNTuple")
        }
        trees = list(classes)
        name = self.tree_name or (trees[0] if len(set(trees)) == 1 else "Events")
        if name not in trees:
            raise DataError(
                f"no tree '{name}' in the file (its trees: {', '.join(sorted(set(trees))) or 'none'})", path
            )
        try:
            self._tree = self._file[name]
        except Exception as e:
            raise DataError(f"cannot read the tree '{name}': {type(e).__name__}: {e}", path) from e
        self.tree_name = name
        self._rntuple = classes[name] == "ROOT::RNTuple"  # what uproot >= 5.7 writes by default
        self._pid = os.getpid()

    @property
    def num_events(self) -> int:
        return int(self._tree.num_entries)

    def _read(self, names: list[str], start: int, stop: int) -> dict[str, Any]:
        if self._pid != os.getpid():  # a forked worker reopens: file handles are not shared
            self._open()
        try:
            return self._tree.arrays(names, entry_start=start, entry_stop=stop, library="ak", how=dict)
        except Exception:
            # find the branch to blame, one at a time (only on this error path)
            for n in names:
                try:
                    self._tree[n].array(entry_start=start, entry_stop=stop, library="ak")
                except Exception as e:
                    raise DataError(
                        f"cannot read events {start}-{stop}: {type(e).__name__}: {e}", self.path, n
                    ) from e
            raise

    def close(self) -> None:
        self._file.close()


def _ak_kind(t) -> tuple[str | None, str]:
    """Flat or jagged from an awkward type (RNTuple fields)."""
    import awkward as ak

    def numeric(x) -> bool:
        return (
            isinstance(x, ak.types.NumpyType)
            and x.primitive not in ("datetime64", "timedelta64")
            and not x.primitive.startswith("complex")
        )

    if numeric(t):
        return FLAT, ""
    if isinstance(t, (ak.types.ListType, ak.types.RegularType)) and numeric(t.content):
        return JAGGED, ""
    return None, f"type {t} is neither a number nor a list of numbers"


def _root_kind(uproot, br) -> tuple[str | None, str]:
    try:
        interp = br.interpretation
    except Exception as e:  # noqa: BLE001
        return None, f"no interpretation ({e})"
    i = uproot.interpretation
    if isinstance(interp, i.numerical.AsDtype):
        shape = interp.to_dtype.shape
        if interp.to_dtype.kind not in "biuf":
            return None, f"type {br.typename} is not numeric"
        if shape == ():
            return FLAT, ""
        if len(shape) == 1:
            return JAGGED, ""
        return None, f"type {br.typename}: arrays of {len(shape)} dimensions are not supported"
    if (
        isinstance(interp, i.jagged.AsJagged)
        and isinstance(interp.content, i.numerical.AsDtype)
        and interp.content.to_dtype.shape == ()
        and interp.content.to_dtype.kind in "biuf"
    ):
        return JAGGED, ""
    return None, f"type {br.typename} is neither a number nor a list of numbers"


# --- Arrow-based: Parquet, CSV, JSON lines -----------------------------------------------------


def _arrow_kind(pa, t) -> tuple[str | None, str]:
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return FLAT, ""
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        v = t.value_type
        if pa.types.is_integer(v) or pa.types.is_floating(v) or pa.types.is_boolean(v):
            return JAGGED, ""
    return None, f"type {t} is neither a number nor a list of numbers"


def _arrow_columns(pa, schema, path) -> tuple[dict[str, str], dict[str, str]]:
    cols, skipped = {}, {}
    for f in schema:
        kind, why = _arrow_kind(pa, f.type)
        if kind:
            cols[f.name] = kind
        else:
            skipped[f.name] = why
    if not cols and not skipped:
        raise DataError("no columns", path)
    return cols, skipped


def _to_ak(table, names):
    import awkward as ak

    return {n: ak.from_arrow(table.column(n), highlevel=True) for n in names}


def _fs_open(path: str, mode: str = "rb"):
    import fsspec

    return fsspec.open(path, mode, compression="infer").open()


class ParquetReader(Reader):
    """A Parquet file (pyarrow); a range is read from the row groups it spans only."""

    def __init__(self, path: str, **_: Any):
        import pyarrow as pa

        self.path = path
        if not is_url(path) and os.path.exists(path) and os.path.getsize(path) == 0:
            raise DataError("the file is empty (0 bytes), not a Parquet file", path)
        self._pf = self._open_parquet()
        self.columns, self.skipped = _arrow_columns(pa, self._pf.schema_arrow, path)
        md = self._pf.metadata
        self._rg_rows = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
        self._rg_start = np.concatenate([[0], np.cumsum(self._rg_rows)]).astype(np.int64)

    def _open_parquet(self):
        import pyarrow.parquet as pq

        self._pid = os.getpid()
        try:
            return pq.ParquetFile(_fs_open(self.path) if is_url(self.path) else self.path)
        except Exception as e:
            raise DataError(f"cannot open as a Parquet file: {type(e).__name__}: {e}", self.path) from e

    @property
    def num_events(self) -> int:
        return int(self._rg_start[-1])

    def _read(self, names: list[str], start: int, stop: int) -> dict[str, Any]:
        import pyarrow as pa

        if stop <= start:
            return _to_ak(
                pa.table({n: pa.array([], type=self._pf.schema_arrow.field(n).type) for n in names}), names
            )
        if self._pid != os.getpid():  # a forked worker opens the file again
            self._pf = self._open_parquet()
        first = int(np.searchsorted(self._rg_start, start, side="right") - 1)
        last = int(np.searchsorted(self._rg_start, stop, side="left"))
        table = self._pf.read_row_groups(list(range(first, last)), columns=names)
        off = int(start - self._rg_start[first])
        return _to_ak(table.slice(off, stop - start), names)


class _StreamingReader(Reader):
    """CSV and JSON lines: read front to back in blocks. A range at or after the last one read
    continues the stream; an earlier one starts it again (so read these in order: one pass to
    count the rows at open, one per epoch)."""

    def __init__(self, path: str, **_: Any):
        import pyarrow as pa

        self.path = path
        if not is_url(path):
            if not os.path.exists(path):
                raise DataError("no such file", path)
            if os.path.getsize(path) == 0:
                raise DataError("the file is empty (0 bytes)", path)
        n, schema = 0, None
        try:
            for batch in self._batches():
                schema = batch.schema
                n += batch.num_rows
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"cannot parse: {type(e).__name__}: {e}", path) from e
        if schema is None:
            raise DataError("no rows", path)
        self._n = n
        self._schema = schema
        self.columns, self.skipped = _arrow_columns(pa, schema, path)
        self._it = None
        self._pos = 0
        self._buf = None  # the current block and the row it starts at
        self._pid = os.getpid()

    @abstractmethod
    def _batches(self): ...

    @property
    def num_events(self) -> int:
        return self._n

    def _read(self, names: list[str], start: int, stop: int) -> dict[str, Any]:
        import pyarrow as pa

        if self._it is None or self._buf is None or start < self._buf[1] or self._pid != os.getpid():
            # (a forked worker starts its own stream: the parent's open file is not its own)
            self._pid = os.getpid()
            self._it, self._buf = self._batches(), None
            self._pos = 0
        pieces = []
        while True:
            if self._buf is None:
                try:
                    b = next(self._it)
                except StopIteration:
                    break
                self._buf = (b, self._pos)
                self._pos += b.num_rows
            b, b0 = self._buf
            b1 = b0 + b.num_rows
            if b1 > start and b0 < stop:
                pieces.append(b.slice(max(0, start - b0), min(stop, b1) - max(start, b0)))
            if b1 >= stop:
                break
            self._buf = None
        table = pa.Table.from_batches(pieces, schema=self._schema) if pieces else self._schema.empty_table()
        return _to_ak(table.select(names), names)


class CsvReader(_StreamingReader):
    def _batches(self):
        import pyarrow.csv as pcsv

        with (
            _fs_open(self.path)
            if is_url(self.path) or self.path.endswith(".gz")
            else open(self.path, "rb") as f
        ):
            yield from pcsv.open_csv(f, read_options=pcsv.ReadOptions(block_size=1 << 22))


class JsonLinesReader(_StreamingReader):
    def _batches(self):
        import pyarrow.json as pjson

        with (
            _fs_open(self.path)
            if is_url(self.path) or self.path.endswith(".gz")
            else open(self.path, "rb") as f
        ):
            yield from pjson.open_json(f, read_options=pjson.ReadOptions(block_size=1 << 22))


def reader_class(path: str) -> type[Reader]:
    p = path.lower().split("?")[0]
    for suffixes, cls in (
        (ROOT_SUFFIXES, RootReader),
        (PARQUET_SUFFIXES, ParquetReader),
        (CSV_SUFFIXES, CsvReader),
        (JSON_SUFFIXES, JsonLinesReader),
    ):
        if p.endswith(suffixes):
            return cls
    if ".root" in p:  # e.g. name.root.1
        return RootReader
    raise DataError("unknown format: give a .root, .parquet, .csv or .json/.jsonl file", path)


def open_reader(path: str, tree: str | None = None, redirector: str | None = None) -> Reader:
    """The reader for ``path`` by its suffix (``tree`` and ``redirector`` apply to ROOT)."""
    cls = reader_class(path)
    if cls is RootReader:
        return RootReader(path, tree=tree, redirector=redirector)
    return cls(path)
