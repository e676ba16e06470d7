"""phpo.data throughput: specs pass, chunk creation and raw uproot reading of the same branches.

Builds ROOT files of about 1 M events from the real H->ZZ sample (tests/data/hep/uproot-HZZ.root,
2,421 events, 51 branches of which 23 jagged; its events repeated) with zlib, lz4 and no
compression in a temporary directory (deleted afterwards, never committed), then measures in one
run, per compression:

- the specs pass (``compute_specs``): events per CPU-second;
- chunk creation: ``Stream.batches(1024)``, what a training loop gets (normalised, padded,
  masked, shuffled float32 batches), and ``Stream.chunks`` (whole chunks in new arrays);
- the raw read: ``uproot`` ``TTree.iterate`` of the same 51 branches in the same step, nothing done
  with the arrays (the peer: what reading alone costs);
- the ratio chunk creation / raw read.

Then, for the zlib file, the memory peak (VmHWM of a fresh subprocess making one epoch) at 1 M
and at 10 M events (the 1 M file listed 10 times), and the wall time of one epoch through a
PyTorch DataLoader (``torch_loader``) over ``Stream(workers=1|2)`` with ``num_workers`` 0, 1 and 2, and ``Stream(workers=1|2)``: events per
wall-second and cores busy (CPU time of the process and of its worker processes / wall time),
three runs, the median by wall time (noisy on a shared machine: wall time depends on what else
runs).

CPU time is ``time.process_time`` of this process (one core: uproot and numpy run single-threaded
here), so a busy machine changes the wall time more than the figures; raw read and chunk
creation are run three times, interleaved, and the median CPU time of each is reported.

    .venv/bin/python benchmarks/data_stream.py                  # ~1 M events (several minutes)
    .venv/bin/python benchmarks/data_stream.py --events 200000  # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HZZ = ROOT / "tests" / "data" / "hep" / "uproot-HZZ.root"
BRANCHES_OF_HZZ = 51


def build(src: Path, dest: Path, events: int, compression: str, basket: int = 50_000) -> list[str]:
    """``dest``: the tree ``events`` with every branch of ``src``, its events repeated to ``events``;
    jagged branches keep their per-event lengths (zipped by prefix, so Jet_* share one counter)."""
    import awkward as ak
    import numpy as np
    import uproot

    t = uproot.open(src)["events"]
    arrays = t.arrays(library="ak", how=dict)
    names = list(arrays)
    n0 = len(arrays[names[0]])
    comp = {"zlib": uproot.ZLIB(1), "lz4": uproot.LZ4(1), "none": None}[compression]
    groups: dict[str, dict[str, ak.Array]] = {}
    flat: dict[str, ak.Array] = {}
    for k, v in arrays.items():
        if v.ndim > 1:
            p, rest = k.split("_", 1)
            groups.setdefault(p, {})[rest] = v
        else:
            flat[k] = v
    with uproot.recreate(dest, compression=comp) as f:
        written = 0
        while written < events:
            m = min(basket, events - written)
            idx = np.arange(written, written + m) % n0
            data = {k: v[idx] for k, v in flat.items()}
            data.update({p: ak.zip({r: a[idx] for r, a in g.items()}) for p, g in groups.items()})
            if written == 0:  # a TTree (uproot 5.7 writes an RNTuple for f[name] = data)
                f.mktree("events", {k: v.type for k, v in data.items()})
            f["events"].extend(data)
            written += m
    return names


def cpu(fn):
    t0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - t0, time.perf_counter() - w0


def measure(path: str, names: list[str], events: int, chunk: int, batch: int = 1024, repeat: int = 3) -> dict:
    import uproot

    from phpo.data import Stream, compute_specs

    def specs():
        return compute_specs([path], tree="events", branches=names, chunk_size=chunk)

    sp, t_specs, _ = cpu(specs)

    def raw():
        n = 0
        with uproot.open(path, array_cache=None, object_cache=None) as f:
            for arrays in f["events"].iterate(names, step_size=chunk, library="ak", how=dict):
                n += len(arrays[names[0]])
        return n

    def chunks():
        s = Stream(
            [path], labels=[1], tree="events", branches=names, specs=sp, chunk_size=chunk, shuffle=True
        )
        n = 0
        for b in s.batches(batch, 0):
            n += len(b)
        return n

    def fresh():
        s = Stream(
            [path], labels=[1], tree="events", branches=names, specs=sp, chunk_size=chunk, shuffle=True
        )
        return sum(len(c) for c in s.chunks(0))

    # interleaved repetitions; the median CPU time of each is kept (the machine is shared with
    # other busy processes: cache and memory-bandwidth contention only ever add time)
    t_raws, t_chunks = [], []
    for _ in range(repeat):
        n_raw, t, _ = cpu(raw)
        t_raws.append(t)
        n_chunk, t, _ = cpu(chunks)
        t_chunks.append(t)
    t_raw, t_chunk = statistics.median(t_raws), statistics.median(t_chunks)
    n_fresh, t_fresh, _ = cpu(fresh)
    assert n_raw == n_chunk == n_fresh == events, (n_raw, n_chunk, n_fresh, events)
    return {
        "specs": events / t_specs,
        "chunks": events / t_chunk,
        "raw": events / t_raw,
        "ratio": t_raw / t_chunk,
        "fresh": events / t_fresh,
        "raw_cpu_s": t_raws,
        "chunk_cpu_s": t_chunks,
        "dim": Stream([path], tree="events", branches=names, specs=sp).dim,
    }


CHILD = r"""
import json, sys, time
from phpo.data import Stream, Specs

def hwm_mb():  # this process's peak RSS (VmHWM: unlike ru_maxrss, not inherited from the parent)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

files, names, chunk, specs = json.loads(sys.argv[1])
sp = Specs.from_dict(specs)
s = Stream(files, labels=[1] * len(files), tree="events", branches=names, specs=sp, chunk_size=chunk)
rss0 = hwm_mb()
n, t0 = 0, time.process_time()
for b in s.batches(1024, 0):
    n += len(b)
print(json.dumps({"events": n, "cpu_s": time.process_time() - t0, "rss_before_mb": rss0, "specs": s.specs_source,
                  "max_rss_mb": hwm_mb()}))
"""

LOADER = r"""
import json, sys, time
from phpo.data import Stream
from phpo.data.adapters import torch_loader
path, names, chunk, stream_workers, workers = json.loads(sys.argv[1])
s = Stream([path], labels=[1], tree="events", branches=names, chunk_size=chunk, workers=stream_workers)
loader = torch_loader(s, batch_size=1024, num_workers=workers)
sum(len(x) for x, y in loader)  # warm: the specs cached, the file in the page cache
t0, n = time.perf_counter(), 0
for x, y in loader:
    n += len(x)
print(json.dumps({"events": n, "wall_s": time.perf_counter() - t0}))
"""


WORKERS = r"""
import json, os, resource, sys, time
from phpo.data import Stream, Specs

def busy(t):  # this process's CPU seconds and its reaped children's (the worker processes)
    return t.user + t.system + t.children_user + t.children_system

path, names, chunk, specs, workers = json.loads(sys.argv[1])
s = Stream([path], labels=[1], tree="events", branches=names, specs=Specs.from_dict(specs), chunk_size=chunk,
           workers=workers)
sum(len(b) for b in s.batches(1024, 1))  # warm: the kernel loaded, the file in the page cache
t0, c0, p0, n = time.perf_counter(), os.times(), time.process_time(), 0
for b in s.batches(1024, 0):
    n += len(b)
wall, cpu = time.perf_counter() - t0, busy(os.times()) - busy(c0)  # the epoch's workers are reaped by now
hwm = next(int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"events": n, "wall_s": wall, "cpu_s": cpu, "caller_cpu_s": time.process_time() - p0,
                  "max_rss_mb": hwm, "worker_max_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def child(code: str, arg) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(arg)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--chunk-size", type=int, default=100_000)
    ap.add_argument("--compressions", default="zlib,lz4,none")
    ap.add_argument("--no-memory", action="store_true", help="skip the 1 M / 10 M memory runs")
    ap.add_argument("--no-workers", action="store_true", help="skip the 1 vs 2 worker runs")
    a = ap.parse_args()
    rows, out = [], {}
    with tempfile.TemporaryDirectory(prefix="phpo-bench-data-") as tmp:
        for comp in a.compressions.split(","):
            path = os.path.join(tmp, f"hzz-{comp}.root")
            names = build(HZZ, Path(path), a.events, comp)
            assert len(names) == BRANCHES_OF_HZZ
            m = measure(path, names, a.events, a.chunk_size)
            m["size_mb"] = os.path.getsize(path) / 1e6
            out[comp] = m
            rows.append(
                f"| {comp} | {m['size_mb']:.0f} | {m['specs'] / 1e3:.0f} k | {m['chunks'] / 1e3:.0f} k | "
                f"{m['raw'] / 1e3:.0f} k | {m['ratio']:.2f} | {m['fresh'] / 1e3:.0f} k |"
            )
            print(rows[-1], flush=True)
        first = os.path.join(tmp, f"hzz-{a.compressions.split(',')[0]}.root")
        if not a.no_memory:
            from phpo.data import compute_specs

            specs = json.loads(compute_specs([first], tree="events", branches=names).to_json())
            for k in (1, 10):
                # the same file 10 times over is a 10 M-event epoch (specs of one copy serve all)
                r = child(CHILD, [[first] * k, names, a.chunk_size, specs])
                out[f"memory_{k}x"] = r
                print(
                    f"memory, {r['events']:,} events: max RSS {r['max_rss_mb']:.0f} MB "
                    f"({r['rss_before_mb']:.0f} MB before the epoch)",
                    flush=True,
                )
        if not a.no_workers:
            from phpo.data import compute_specs

            specs = json.loads(compute_specs([first], tree="events", branches=names).to_json())
            for w in (1, 2):
                runs = [child(WORKERS, [first, names, a.chunk_size, specs, w]) for _ in range(3)]
                r = sorted(runs, key=lambda r: r["wall_s"])[1]  # the median by wall time
                out[f"stream_workers_{w}"] = runs
                print(
                    f"Stream(workers={w}).batches(1024): {r['events'] / r['wall_s'] / 1e3:.0f} k events per "
                    f"wall-second, CPU {r['cpu_s'] / r['wall_s']:.2f} cores busy, the caller's "
                    f"{r['caller_cpu_s'] / r['wall_s']:.2f} ({r['events'] / r['cpu_s'] / 1e3:.0f} k events per "
                    f"CPU-second; median of 3 by wall time); max RSS {r['max_rss_mb']:.0f} MB"
                    + (f", each worker's up to {r['worker_max_rss_mb']:.0f} MB" if w > 1 else ""),
                    flush=True,
                )
            for sw, w in ((1, 0), (2, 0), (1, 1), (1, 2)):
                r = child(LOADER, [first, names, a.chunk_size, sw, w])
                out[f"loader_stream{sw}_workers{w}"] = r
                print(
                    f"torch_loader(Stream(workers={sw}), num_workers={w}): {r['events']:,} events in "
                    f"{r['wall_s']:.1f} s wall ({r['events'] / r['wall_s'] / 1e3:.0f} k events/s)",
                    flush=True,
                )
    print(
        f"\n{a.events:,} events, {BRANCHES_OF_HZZ} branches (23 jagged), chunk {a.chunk_size:,}, "
        f"columns {out[a.compressions.split(',')[0]]['dim']}; events per CPU-second"
    )
    print(
        "| compression | file MB | specs pass | chunk creation (batches) | raw uproot read | chunk/raw "
        "| chunks() in fresh arrays |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
