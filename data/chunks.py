"""Chunks for training: dense float32 matrices made from many files without loading them whole.

An epoch is a list of chunks; chunk ``k`` of ``K`` takes events ``[k*N_i/K, (k+1)*N_i/K)`` of each
file ``i`` (``N_i`` its events), so every chunk holds each file, hence each label, in proportion
to its size, and at most about ``chunk_size`` events are in memory at once whatever the files'
size. With ``shuffle`` the chunks come in a seeded random order and the events inside each chunk
are permuted (seed and epoch decide both: the same seed gives the same epoch).

Columns: the flat branches (sorted), then each jagged branch (sorted) as ``L`` columns
``name_0 .. name_{L-1}``, ``L`` its length in the specs (``jdim``) or ``jagged_cap`` when smaller.
Values are normalised with the specs: ``"minmax"`` maps [min, max] to [0, 1] (a constant branch
becomes 0), ``"standard"`` gives (x - mean) / std, ``None`` leaves them raw. Jagged padding and NaN
values become ``pad_value`` (MLaaS4HEP's ``nan``).

The mask has the matrix's shape. Its polarity, ``mask="valid"`` (the default): 1 where the value
is real, 0 where it is padding or was NaN. ``mask="mlaas4hep"``: the other way round, as
MLaaS4HEP's ``np.isnan(x) * 1`` (1 where padding or NaN). ``mask=None``: no mask.

All of it is vectorised (numpy on whole branches, then on blocks of a few thousand events that
stay in the core's cache while every column is written): no Python loop runs per event.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import DataError
from .readers import Reader, open_reader
from .specs import DEFAULT_CHUNK, Specs, compute_specs, is_current, load_or_compute

NORMALISATIONS = ("minmax", "standard", None)
MASKS = ("valid", "mlaas4hep", None)


@dataclass
class Chunk:
    """One chunk: ``x`` (events x columns, float32), ``mask`` (same shape, float32, or None),
    ``y`` (labels, float32, or None), ``ids`` (identifier branches, or empty), ``source``
    (the index of the file each event came from)."""

    x: np.ndarray
    mask: np.ndarray | None
    y: np.ndarray | None
    ids: dict[str, np.ndarray]
    source: np.ndarray
    #: inside a stream only: the mask kept as one row of a :class:`MaskTable` per event
    mask_rows: tuple[np.ndarray, MaskTable] | None = None

    def __len__(self) -> int:
        return len(self.x)

    def _mask(self, idx, out: np.ndarray | None = None, dtype=np.float32) -> np.ndarray | None:
        """The mask of the events ``idx`` (indices or a slice) as a new ``dtype`` array (or into
        ``out``)."""
        if self.mask_rows is not None:
            codes, table = self.mask_rows
            rows = table.rows if dtype == np.float32 else table.rows_u8
            return np.take(rows, codes[idx], axis=0, out=out, mode="clip")
        if self.mask is None:
            return None
        if isinstance(idx, slice):
            if out is None:
                return self.mask[idx].astype(dtype)
            out[...] = self.mask[idx]
            return out
        m = np.take(self.mask, idx, axis=0, out=out if dtype == np.uint8 else None, mode="clip")
        return m if out is not None else m.astype(dtype, copy=False)

    def take(self, idx: np.ndarray) -> Chunk:
        """The events ``idx`` (indices) as new arrays (the mask as float32)."""

        def t(a):
            return None if a is None else np.take(a, idx, axis=0)

        return Chunk(
            t(self.x), self._mask(idx), t(self.y), {k: t(v) for k, v in self.ids.items()}, t(self.source)
        )

    def cut(self, start: int, stop: int) -> Chunk:
        """Events ``start .. stop`` as new arrays (the mask as float32): ``take`` of a range."""

        def c(a):
            return None if a is None else a[start:stop].copy()

        rows = slice(start, stop)
        return Chunk(
            c(self.x), self._mask(rows), c(self.y), {k: c(v) for k, v in self.ids.items()}, c(self.source)
        )


class MaskTable:
    """Every mask row a chunk without NaN can have: an event's mask is set by how many entries
    of each jagged collection it has (``kept``, at most L), so it is row ``sum(kept_g *
    stride_g)`` of this table. Chunks then keep one int32 per event instead of a mask row, and
    a batch's mask is a gather from a table small enough to stay in cache."""

    MAX_ROWS = 4096

    def __init__(self, nf: int, dim: int, groups: tuple[tuple[int, tuple[int, ...]], ...], valid_is: float):
        valid, invalid = np.uint8(valid_is), np.uint8(1 - valid_is)
        self.strides = np.cumprod([1] + [L + 1 for L, _ in groups], dtype=np.int64)[: len(groups)]
        size = self.size(groups)
        code = np.arange(size)
        rows = np.full((size, dim), invalid, dtype=np.uint8)
        rows[:, :nf] = valid
        for (L, columns), stride in zip(groups, self.strides, strict=True):
            kept = (code // int(stride)) % (L + 1)
            pattern = np.where(np.arange(L)[None, :] < kept[:, None], valid, invalid)
            for j in columns:
                rows[:, j : j + L] = pattern
        self.rows_u8, self.rows = rows, rows.astype(np.float32)

    @classmethod
    def size(cls, groups) -> int:
        return int(np.prod([L + 1 for L, _ in groups])) if groups else 1


def _nothing() -> None:
    """The release of a chunk made in this process (nothing to give back)."""


def _label_value(label: Any, path: str) -> float | None:
    if label is None:
        return None
    try:
        return float(label)
    except (TypeError, ValueError):
        raise DataError(f"the label {label!r} is not a number", path) from None


def _group(offsets: np.ndarray, L: int) -> tuple[np.ndarray, np.ndarray, Any]:
    """For a jagged array with ``offsets``: (entries kept per event, the first ``L`` of each;
    where each event's kept entries start among all kept ones, ``n + 1`` values; which content
    entries are kept, a slice when none is clipped)."""
    counts = np.diff(offsets)
    clipped = bool(counts.size) and int(counts.max()) > L
    kept = np.minimum(counts, L) if clipped else counts
    starts = np.empty(len(counts) + 1, dtype=np.int64)
    starts[0] = 0
    np.cumsum(kept, out=starts[1:])
    if not clipped:
        return kept, starts, slice(int(offsets[0]), int(offsets[-1]))
    within = np.arange(int(starts[-1]), dtype=np.int64) - np.repeat(starts[:-1], kept)
    return kept, starts, np.repeat(offsets[:-1], kept) + within


@dataclass
class _Piece:
    """A piece's branches normalised and its jagged layout worked out (:meth:`Stream._prepare`),
    ready to be written."""

    m: int
    flat: np.ndarray
    flat_nan: list[tuple[int, np.ndarray]]
    groups: list[tuple[int, np.ndarray, np.ndarray, Any]]
    jagged: list[tuple[int, int, np.ndarray, np.ndarray | None]]

    @property
    def has_nan(self) -> bool:
        return bool(self.flat_nan) or any(bad is not None for *_, bad in self.jagged)

    @property
    def shape(self) -> tuple[tuple[int, tuple[int, ...]], ...]:
        """Per group: L and the first columns of its branches."""
        return tuple(
            (L, tuple(j for j, g2, _, _ in self.jagged if g2 == g)) for g, (L, *_) in enumerate(self.groups)
        )


class Stream:
    """Training data from ``files`` as chunks and batches.

    ``labels``: one number per file (MLaaS4HEP's ``labels.txt``), or ``label_branch``: a branch
    holding each event's label. ``specs``: a :class:`Specs`, a specs JSON path, or ``None`` to
    compute them (once, cached under ``cache_dir`` keyed by the files' sizes and mtimes).
    ``ranges``: per file, the ``(start, stop)`` events to use (e.g. a validation split); default
    the first ``nevts`` (-1: all). ``workers``: 1, everything in the calling process; N of 2 or
    more, N worker processes each read and assemble every N-th chunk of the epoch, so N cores
    work, and the calling process only cuts the batches (:mod:`phpo.data.parallel`); the chunks
    and batches are the same whatever ``workers``.
    """

    def __init__(
        self,
        files: Sequence[str],
        labels: Sequence[Any] | None = None,
        label_branch: str | None = None,
        tree: str | None = None,
        branches: Sequence[str] | None = None,
        exclude_branches: Sequence[str] | None = None,
        identifier: Sequence[str] | None = None,
        specs: Specs | str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        chunk_size: int = DEFAULT_CHUNK,
        nevts: int = -1,
        shuffle: bool = True,
        seed: int = 0,
        normalise: str | None = "minmax",
        jagged_cap: int | None = None,
        mask: str | None = "valid",
        pad_value: float = 0.0,
        redirector: str | None = None,
        ranges: Sequence[tuple[int, int]] | None = None,
        workers: int = 1,
    ):
        self.files = [str(f) for f in files]
        if not self.files:
            raise DataError("no input files")
        if normalise not in NORMALISATIONS:
            raise DataError(f"normalise must be one of {NORMALISATIONS}, got {normalise!r}")
        if mask not in MASKS:
            raise DataError(f"mask must be one of {MASKS}, got {mask!r}")
        if chunk_size < 1:
            raise DataError(f"chunk_size must be at least 1, got {chunk_size}")
        if int(workers) < 1:
            raise DataError(f"workers must be at least 1, got {workers}")
        self.workers = int(workers)
        if labels is not None and len(labels) != len(self.files):
            raise DataError(f"{len(labels)} labels for {len(self.files)} files: give one label per file")
        self.labels = (
            [_label_value(lb, f) for lb, f in zip(labels, self.files, strict=True)] if labels else None
        )
        self.label_branch = label_branch
        self.tree, self.redirector = tree, redirector
        self.chunk_size, self.nevts = int(chunk_size), int(nevts)
        self.shuffle, self.seed = bool(shuffle), int(seed)
        self.normalise, self.mask_kind, self.pad_value = normalise, mask, float(pad_value)
        self.jagged_cap = jagged_cap
        opts = dict(
            tree=tree,
            branches=list(branches or []) or None,
            exclude_branches=list(exclude_branches or []) or None,
            identifier=list(identifier or []),
            label_branch=label_branch,
            nevts=nevts,
            redirector=redirector,
        )
        self._readers: dict[int, Reader] = {
            i: open_reader(f, tree=tree, redirector=redirector) for i, f in enumerate(self.files)
        }
        by_name = {f: self._readers[i] for i, f in enumerate(self.files)}
        self.specs_source = "given"
        if specs is None:
            self.specs, self.specs_source = load_or_compute(self.files, cache_dir, readers=by_name, **opts)
        else:
            self.specs = specs if isinstance(specs, Specs) else Specs.load(specs)
            if not is_current(self.specs, self.files):
                # made from these files before they changed: never use stale specs
                self.specs, self.specs_source = compute_specs(self.files, readers=by_name, **opts), "computed"
        self._check_branches()
        # identifier branches every file has (MLaaS4HEP's default names several a file may lack)
        self.identifier = [
            n for n in (identifier or []) if all(n in r.columns for r in self._readers.values())
        ]
        sp = self.specs
        self.fkeys = list(sp.fkeys)
        self.jkeys = list(sp.jkeys)
        self.jlen = {
            k: min(int(sp.jdim.get(k, 0)), int(jagged_cap))
            if jagged_cap is not None
            else int(sp.jdim.get(k, 0))
            for k in self.jkeys
        }
        self.columns = list(self.fkeys) + [f"{k}_{i}" for k in self.jkeys for i in range(self.jlen[k])]
        self._offset, self._scale = self._norm_params()
        self.ranges = (
            list(ranges) if ranges is not None else [(0, self._events(i)) for i in range(len(self.files))]
        )

    # --- setup -----------------------------------------------------------------------------

    def _check_branches(self) -> None:
        need = self.specs.fkeys + self.specs.jkeys + ([self.label_branch] if self.label_branch else [])
        for i, f in enumerate(self.files):
            r = self._readers[i]
            for n in need:
                if n not in r.columns:
                    raise DataError(
                        f"no such branch (the specs list it; the file has {len(r.columns)} numeric branches)",
                        f,
                        n,
                    )

    def _reader(self, i: int) -> Reader:
        return self._readers[i]

    def _events(self, i: int) -> int:
        n = self._readers[i].num_events
        return n if self.nevts < 0 else min(self.nevts, n)

    def _norm_params(self) -> tuple[dict[str, float], dict[str, float]]:
        sp, off, scale = self.specs, {}, {}
        for k in self.fkeys + self.jkeys:
            if self.normalise == "minmax":
                lo, hi = float(sp.minv[k]), float(sp.maxv[k])
                off[k], scale[k] = lo, (1.0 / (hi - lo) if hi > lo else 0.0)
            elif self.normalise == "standard":
                if k not in sp.std or k not in sp.mean:
                    raise DataError(
                        "standard normalisation needs the mean and std of each branch, which "
                        "these specs lack (MLaaS4HEP's have none): use minmax or phpo's specs",
                        branch=k,
                    )
                m, s = float(sp.mean[k]), float(sp.std[k])
                off[k], scale[k] = m, (1.0 / s if s > 0 else 0.0)
            else:
                off[k], scale[k] = 0.0, 1.0
        return off, scale

    #: bytes of matrix written per block of rows (about a core's L2 cache, see :meth:`_fill`)
    BLOCK_BYTES = 2 << 20

    @property
    def block_rows(self) -> int:
        """Events per block when a chunk's matrix is written (:meth:`_fill`)."""
        return max(256, min(8192, self.BLOCK_BYTES // (4 * max(1, self.dim))))

    @property
    def dim(self) -> int:
        """The number of columns (MLaaS4HEP's ``idim``, what ``model(idim)`` gets)."""
        return len(self.columns)

    @property
    def num_events(self) -> int:
        return int(sum(b - a for a, b in self.ranges))

    def split(self, fraction: float) -> tuple[Stream, Stream]:
        """(training, validation): the last ``fraction`` of each file's events are validation."""
        if not 0 < fraction < 1:
            raise DataError(f"the validation fraction must be between 0 and 1, got {fraction}")
        cut = [(a, b - int(round((b - a) * fraction))) for a, b in self.ranges]
        train, val = (
            self._with_ranges([(a, c) for (a, _), (_, c) in zip(self.ranges, cut, strict=True)]),
            self._with_ranges([(c, b) for (_, b), (_, c) in zip(self.ranges, cut, strict=True)]),
        )
        return train, val

    def _with_ranges(self, ranges: list[tuple[int, int]]) -> Stream:
        other = object.__new__(Stream)
        # its own working memory: batches of the two may be drawn in turns
        other.__dict__.update({k: v for k, v in self.__dict__.items() if k not in ("_work", "_flat")})
        other.ranges = ranges
        return other

    # --- the plan ---------------------------------------------------------------------------

    def num_chunks(self) -> int:
        return max(1, math.ceil(self.num_events / self.chunk_size))

    def plan(self, epoch: int = 0) -> list[list[tuple[int, int, int]]]:
        """Chunk ``k``: ``[(file index, start, stop), ...]``, in the epoch's order."""
        K = self.num_chunks()
        bounds = [np.linspace(a, b, K + 1).round().astype(np.int64) for a, b in self.ranges]
        chunks = [
            [(i, int(bd[k]), int(bd[k + 1])) for i, bd in enumerate(bounds) if bd[k + 1] > bd[k]]
            for k in range(K)
        ]
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(K)
            chunks = [chunks[k] for k in order]
        return chunks

    # --- making chunks ------------------------------------------------------------------------

    def make_chunk(
        self, pieces: Sequence[tuple[int, int, int]], rng: np.random.Generator | None = None
    ) -> Chunk:
        """One chunk of the given ``(file, start, stop)`` pieces, in new arrays the caller owns;
        with ``rng`` its events are permuted."""
        n = sum(b - a for _, a, b in pieces)
        order = rng.permutation(n) if rng is not None else None
        return self._whole_chunk(self._make(pieces, self._read_pieces(pieces), order))

    def _whole_chunk(self, made: tuple[Chunk, np.ndarray | None]) -> Chunk:
        chunk, order = made
        if order is None:  # the chunk's own arrays, its mask made float32
            return Chunk(chunk.x, chunk._mask(slice(None)), chunk.y, chunk.ids, chunk.source)
        return chunk.take(order)

    def _read_pieces(self, pieces: Sequence[tuple[int, int, int]]) -> list[tuple[dict, dict]]:
        """The raw arrays of each piece: (feature branches, identifier and label branches)."""
        return [
            (self._reader(i).read(self.fkeys + self.jkeys, a, b), self._extras(i, a, b)) for i, a, b in pieces
        ]

    def _make(
        self, pieces, data, order: np.ndarray | None, work: bool = False
    ) -> tuple[Chunk, np.ndarray | None]:
        """(chunk, order still to apply): the events assembled in file order, ``order`` left to
        the caller (a ``take`` per batch)."""
        return self._assemble(pieces, data, work), order

    def _assemble(self, pieces: Sequence[tuple[int, int, int]], data, work: bool) -> Chunk:
        """The pieces' events in order. ``work``: into the working matrices kept from chunk to
        chunk (their memory pages are already mapped, which saves most of the cost of a fresh
        100 MB matrix); valid until the next call."""
        n = sum(b - a for _, a, b in pieces)
        dim = self.dim
        valid_is = 1.0 if self.mask_kind == "valid" else 0.0
        flat, at, prepared = self._flat_block(n), 0, []
        for (_, a, b), (arrays, _) in zip(pieces, data, strict=True):
            prepared.append(self._prepare(arrays, b - a, flat[:, at : at + b - a]))
            at += b - a
        table = self._mask_table(prepared, valid_is)
        with_mask = bool(self.mask_kind) and table is None
        if work:
            x, mask = self._working(n, with_mask)
        else:
            x = np.empty((n, dim), dtype=np.float32)
            mask = np.empty((n, dim), dtype=np.uint8) if with_mask else None
        codes = np.zeros(n, dtype=np.int32) if table is not None else None
        y, ids, source = self._labels_ids_source(n)
        row = 0
        for (i, a, b), (_, extra), p in zip(pieces, data, prepared, strict=True):
            rows = slice(row, row + b - a)
            self._write(p, row, x, mask, valid_is)
            if codes is not None:
                for (_, kept, _, _), stride in zip(p.groups, table.strides, strict=True):
                    codes[rows] += kept * stride
            self._put_extras(i, rows, extra, n, y, ids, source)
            row += b - a
        return Chunk(x, mask, y, ids, source, None if table is None else (codes, table))

    def _labels_ids_source(self, n: int) -> tuple[np.ndarray | None, dict[str, np.ndarray], np.ndarray]:
        y = np.empty(n, dtype=np.float32) if (self.labels is not None or self.label_branch) else None
        return y, {}, np.empty(n, dtype=np.int32)

    def _put_extras(self, i: int, rows, extra: dict[str, np.ndarray], n: int, y, ids, source) -> None:
        """Labels, identifiers and the file index of a piece's events into ``rows`` (a slice or
        the destination rows)."""
        extra = dict(extra)
        if y is not None:
            y[rows] = extra.pop(self.label_branch) if self.label_branch else self.labels[i]
        for k, v in extra.items():
            if k not in ids:
                ids[k] = np.empty(n, dtype=v.dtype)
            ids[k][rows] = v
        source[rows] = i

    def _flat_block(self, m: int) -> np.ndarray:
        f = getattr(self, "_flat", None)
        if f is None or f.shape[1] < m:
            f = self._flat = np.empty((len(self.fkeys), m), dtype=np.float32)
        return f[:, :m]

    def _working(self, n: int, with_mask: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """The working matrices for a chunk of n events (reused: their pages are already mapped);
        the mask only ``with_mask`` (made the first time one is needed)."""
        w = getattr(self, "_work", None)
        if w is None or w[0].shape[0] < n or w[2] != os.getpid():
            w = self._work = [np.empty((n, self.dim), dtype=np.float32), None, os.getpid()]
        if with_mask and (w[1] is None or w[1].shape[0] < n):
            w[1] = np.empty((w[0].shape[0], self.dim), dtype=np.uint8)
        return w[0][:n], (w[1][:n] if with_mask else None)

    def _extras(self, i: int, a: int, b: int) -> dict[str, np.ndarray]:
        """Identifier and label branches of events [a, b) of file i, as numpy."""
        import awkward as ak

        names = self.identifier + ([self.label_branch] if self.label_branch else [])
        if not names:
            return {}
        arrays = self._reader(i).read(names, a, b)
        return {k: np.asarray(ak.to_numpy(v)) for k, v in arrays.items()}

    def _normalise_into(self, k: str, v: np.ndarray, out: np.ndarray) -> np.ndarray | None:
        """Branch ``k``'s numbers ``v`` normalised with the specs into ``out`` (float32, contiguous
        arithmetic before they are spread into the matrix); the NaN positions, now ``pad_value``,
        or None when there are none."""
        if v.dtype == np.bool_:
            v = v.view(np.uint8)
        np.subtract(v, self._offset[k], out=out, dtype=np.float32, casting="unsafe")
        out *= np.float32(self._scale[k])
        if v.dtype.kind == "f" and self.specs.nan_counts.get(k, 1):
            bad = np.isnan(out)
            if bad.any():
                out[bad] = self.pad_value
                return bad
        return None

    def _jagged_parts(self, arrays) -> Iterator[tuple[str, int, int, np.ndarray, np.ndarray]]:
        """(branch, its first column, L, offsets, content) of each jagged branch with columns."""
        import awkward as ak

        j = len(self.fkeys)
        for k in self.jkeys:
            L = self.jlen[k]
            if L == 0:
                continue
            layout = arrays[k].layout
            if isinstance(layout, ak.contents.ListOffsetArray) and isinstance(
                layout.content, ak.contents.NumpyArray
            ):
                offsets = np.asarray(layout.offsets)
                content = np.asarray(layout.content.data)
            else:  # any other layout (Arrow lists, regular arrays): awkward makes it plain first
                plain = ak.to_packed(ak.values_astype(arrays[k], np.float64))
                lay = ak.to_layout(plain)
                if isinstance(lay, ak.contents.RegularArray):
                    lay = lay.to_ListOffsetArray64(True)
                offsets, content = np.asarray(lay.offsets), np.asarray(lay.content.data)
            yield k, j, L, offsets, content
            j += L

    @staticmethod
    def _same_offsets(groups: list, offsets: np.ndarray) -> int:
        """The index in ``groups`` of offsets equal to ``offsets`` (branches of one collection,
        Jet_*, share theirs), or -1: the last value first, the whole array only then."""
        for g, o in enumerate(groups):
            if o is offsets or (
                len(o) == len(offsets)
                and o[-1] == offsets[-1]
                and o[0] == offsets[0]
                and np.array_equal(o, offsets)
            ):
                return g
        return -1

    def _prepare(self, arrays, m: int, flat: np.ndarray) -> _Piece:
        """A piece's branches normalised where they lie, before anything is written: flat ones
        into ``flat`` (branches x events), jagged ones' first L entries per event into one array
        per branch, with the kept counts and their starts once per distinct offsets array
        (Jet_* branches share theirs), and where NaN was found."""
        import awkward as ak

        flat_nan = []
        for j, k in enumerate(self.fkeys):
            bad = self._normalise_into(k, np.asarray(ak.to_numpy(arrays[k])), flat[j])
            if bad is not None:
                flat_nan.append((j, bad))
        offs: list[np.ndarray] = []
        groups: list[tuple[int, np.ndarray, np.ndarray, Any]] = []  # (L, *_group) per offsets and L
        jagged = []  # (first column, group, normalised kept entries, their NaN positions or None)
        for k, j, L, offsets, content in self._jagged_parts(arrays):
            g = self._same_offsets(offs, offsets)
            if g < 0 or groups[g][0] != L:
                offs.append(offsets)
                groups.append((L, *_group(offsets, L)))
                g = len(groups) - 1
            entries = content[groups[g][3]]
            vals = np.empty(len(entries), dtype=np.float32)
            jagged.append((j, g, vals, self._normalise_into(k, entries, vals)))
        return _Piece(m, flat, flat_nan, groups, jagged)

    def _write(self, p: _Piece, row: int, x: np.ndarray, mask: np.ndarray | None, valid_is: float) -> None:
        """Write a prepared piece into x (and mask) from row ``row`` on, in blocks of
        :attr:`block_rows` events, small enough to stay in the core's cache while every column
        of the block is written: the jagged columns filled with padding, the flat block's slice
        copied in transposed, and each jagged branch scattered to the positions of its entries,
        worked out once per block and offsets array. That is what ``ak.fill_none(ak.pad_none(arr,
        L, clip=True), pad)`` followed by ``ak.to_numpy`` gives, without its intermediate arrays;
        written column by column over the whole 50 MB matrix instead, each column pass went to
        main memory again and cost a third more."""
        dim, nf, flat = self.dim, len(self.fkeys), p.flat
        pad, valid, invalid = self.pad_value, np.uint8(valid_is), np.uint8(1 - valid_is)
        B = self.block_rows
        for r0 in range(0, p.m, B):
            r1 = min(p.m, r0 + B)
            lo, hi = row + r0, row + r1
            xb, xbf = x[lo:hi], x.reshape(-1)[lo * dim : hi * dim]
            xb[:, nf:] = pad  # jagged slots not written below are padding
            if nf:
                xb[:, :nf] = flat[:, r0:r1].T
            if mask is not None:
                mb, mbf = mask[lo:hi], mask.reshape(-1)[lo * dim : hi * dim]
                mb[:, nf:] = invalid
                mb[:, :nf] = valid
                for j, bad in p.flat_nan:
                    mb[:, j][bad[r0:r1]] = invalid
            row_at = np.arange(0, (r1 - r0) * dim, dim, dtype=np.int64)
            where = []  # per group: (its entries in this block, their places in the block)
            for _, kept, starts, _ in p.groups:
                e0, e1 = int(starts[r0]), int(starts[r1])
                dst = np.repeat(row_at - (starts[r0:r1] - e0), kept[r0:r1])  # entry e of event r
                dst += np.arange(e1 - e0, dtype=np.int64)  # goes to r * dim + e (+ its column)
                where.append((slice(e0, e1), dst))
            for j, g, vals, bad in p.jagged:
                entries, dst = where[g]
                xbf[j:][dst] = vals[entries]
                if mask is not None:
                    mbf[j:][dst] = valid if bad is None else np.where(bad[entries], invalid, valid)

    def _mask_table(self, prepared: list[_Piece], valid_is: float) -> MaskTable | None:
        """The :class:`MaskTable` for a chunk of these pieces, or None when its mask has to be
        written out: a NaN anywhere, pieces whose branches group differently, or more than
        :attr:`MaskTable.MAX_ROWS` possible rows."""
        if not self.mask_kind or any(p.has_nan for p in prepared):
            return None
        shapes = {p.shape for p in prepared}
        if len(shapes) != 1:
            return None
        (shape,) = shapes
        if MaskTable.size(shape) > MaskTable.MAX_ROWS:
            return None
        tables = self.__dict__.setdefault("_mask_tables", {})
        if shape not in tables:
            tables[shape] = MaskTable(len(self.fkeys), self.dim, shape, valid_is)
        return tables[shape]

    def _epoch(self, mine: list, epoch: int, work: bool) -> Iterator[tuple[Chunk, np.ndarray | None, Any]]:
        """(chunk, order still to apply or None, release) of each of ``mine`` (``(k, pieces)``):
        made here, or with ``workers`` >= 2 in worker processes (:mod:`phpo.data.parallel`), whose
        chunks come with their events in order already and must be released before the next."""
        from . import parallel

        if self.workers > 1 and len(mine) > 1:
            why = parallel.usable()
            if why is None:
                for chunk, release in parallel.chunks_in_workers(self, mine, epoch):
                    yield chunk, None, release
                return
            warnings.warn(f"Stream(workers={self.workers}): chunks made in this process: {why}", stacklevel=3)
        for k, pieces in mine:
            chunk, order = self._make(
                pieces, self._read_pieces(pieces), self._order(epoch, k, pieces), work=work
            )
            yield chunk, order, _nothing

    def _order(self, epoch: int, k: int, pieces: Sequence[tuple[int, int, int]]) -> np.ndarray | None:
        """The shuffled order of chunk ``k``'s events in ``epoch`` (None without ``shuffle``)."""
        if not self.shuffle:
            return None
        return np.random.default_rng([self.seed, epoch, k]).permutation(sum(b - a for _, a, b in pieces))

    def _mine(self, epoch: int, worker: int, num_workers: int) -> list:
        return [(k, pieces) for k, pieces in enumerate(self.plan(epoch)) if k % num_workers == worker]

    def chunks(self, epoch: int = 0, worker: int = 0, num_workers: int = 1) -> Iterator[Chunk]:
        """The epoch's chunks, each in new arrays; worker ``w`` of ``W`` makes chunks ``w, w+W, ...``
        (each worker process reads its own part of the files)."""
        for chunk, order, release in self._epoch(self._mine(epoch, worker, num_workers), epoch, work=False):
            # a worker's chunk is a view of shared memory, in order already: copied out whole
            whole = self._whole_chunk((chunk, order)) if release is _nothing else chunk.cut(0, len(chunk))
            release()
            yield whole

    def batches(
        self, batch_size: int, epoch: int = 0, worker: int = 0, num_workers: int = 1, drop_last: bool = False
    ) -> Iterator[Chunk]:
        """Batches of ``batch_size`` events cut from the epoch's chunks (the last of a chunk may
        be smaller unless ``drop_last``). Each batch is a new array the caller may keep; the
        chunk itself is assembled in reused working memory, so a chunk costs no fresh large
        allocation. In this process the shuffle is applied while cutting the batches; worker
        processes (``workers`` >= 2) hand over chunks already in the shuffled order."""
        if batch_size < 1:
            raise DataError(f"batch_size must be at least 1, got {batch_size}")
        for chunk, order, release in self._epoch(self._mine(epoch, worker, num_workers), epoch, work=True):
            n = len(chunk)
            for s in range(0, n, batch_size):
                if drop_last and s + batch_size > n:
                    break
                if order is not None:
                    yield chunk.take(order[s : s + batch_size])
                else:
                    yield chunk.cut(s, s + batch_size)
            release()

    def whole(self) -> Chunk:
        """Every event of the stream in one chunk, in file order (for small data and tests)."""
        return self.make_chunk([(i, a, b) for i, (a, b) in enumerate(self.ranges) if b > a])

    def close(self) -> None:
        for r in self._readers.values():
            r.close()
