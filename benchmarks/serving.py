"""Serving throughput and latency: ``phpo serve`` (with and without micro-batching) against
MLflow's own ``mlflow models serve`` (local env manager) on the same model, in one run.

TFaaS's published setup: a 27-feature model with two hidden layers of 1024, 5,000 calls from 200
concurrent clients, each call one feature vector (TFaaS: ~500 requests/s, max latency 2.9 s).
The pipeline's DNN (14 features, 50-20-10, 3 outputs) is measured the same way. A client is a
closed loop: it sends its next call as soon as the answer is in (no think time). The load
generator is ``wrk`` (C, one thread, one connection per client, a Lua script posting JSON) where
it is installed (``apt-get install wrk``), else aiohttp coroutines in this process
(``--generator python``, which costs about a millisecond of CPU per call itself). Either way it
shares this machine's CPUs (2 here, used by other work as well: the load is printed), so the
figures are a floor. CPU per request is the service's own CPU time (all its processes) over the
calls it answered; the generator's is printed beside it. Every client's connection is opened and
every worker's model loaded before the clock starts (steady state, as a TFaaS client that keeps
its connection). wrk runs for ``--seconds`` per row, the Python generator for a count of calls.

    .venv/bin/python benchmarks/serving.py                 # 1, 50, 200 clients; 5,000 calls / 10 s
    .venv/bin/python benchmarks/serving.py --quick         # 1,000 calls / 5 s, 1 and 200 clients
    .venv/bin/python benchmarks/serving.py --services batching,mlflow --models tfaas --clients 200 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import sys
import tarfile
import time
from pathlib import Path

import httpx
from _harness import (
    PYTHON,
    PhpoServer,
    _stop,
    _tail,
    busy_cpu_elsewhere,
    free_port,
    log,
    machine,
    percentile,
    print_table,
    ratio,
    save_result,
    workdir,
)

MODELS = {"tfaas": (27, [1024, 1024], 1), "pipeline_dnn": (14, [50, 20, 10], 3)}


def save_models(root: Path) -> dict[str, Path]:
    """Each shape as an MLflow model folder (PyTorch, traced to TorchScript, as sdk.save_model does)."""
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    out = {}
    for name, (n_in, hidden, n_out) in MODELS.items():
        layers, prev = [], n_in
        for h in hidden:
            layers += [torch.nn.Linear(prev, h), torch.nn.ReLU()]
            prev = h
        net = torch.nn.Sequential(*layers, torch.nn.Linear(prev, n_out)).eval()
        ex = np.zeros((1, n_in), dtype=np.float32)
        with torch.no_grad():
            traced = torch.jit.trace(net, torch.from_numpy(ex))
            sig = infer_signature(ex, traced(torch.from_numpy(ex)).numpy())
        out[name] = root / name
        mlflow.pytorch.save_model(
            traced,
            str(out[name]),
            signature=sig,
            serialization_format="pickle",
            pip_requirements=mlflow.pytorch.get_default_pip_requirements(),
        )
    return out


def wait_http(url: str, proc, log_path: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited {proc.returncode}:\n{_tail(log_path)}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout} s:\n{_tail(log_path)}")


def start(argv: list[str], log_path: Path, env: dict | None = None):
    import subprocess

    with open(log_path, "ab") as f:
        return subprocess.Popen(
            argv,
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )


def cpu_of(proc) -> float:
    import psutil

    try:
        p = psutil.Process(proc.pid)
        ps = [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for q in ps:
        try:
            t = q.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            pass
    return total


async def load(url: str, token: str | None, n_features: int, calls: int, clients: int) -> dict:
    import aiohttp
    import numpy as np

    rows = np.random.default_rng(0).random((64, n_features)).round(6).tolist()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    lat: list[float] = []
    errors = 0
    left = [calls]

    async def client(session: aiohttp.ClientSession, k: int) -> None:
        nonlocal errors
        i = k
        while left[0] > 0:
            left[0] -= 1
            t0 = time.perf_counter()
            async with session.post(url, json={"inputs": [rows[i % 64]]}, headers=headers) as r:
                await r.read()
                if r.status != 200:
                    errors += 1
            lat.append(time.perf_counter() - t0)
            i += clients

    conn = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as s:

        async def warm() -> None:
            async with s.post(url, json={"inputs": [rows[0]]}, headers=headers) as r:
                assert r.status == 200, await r.text()

        # every client's connection opened (and the model loaded) before the clock starts
        await asyncio.gather(*(warm() for _ in range(clients)))
        t0 = time.perf_counter()
        await asyncio.gather(*(client(s, k) for k in range(clients)))
        wall = time.perf_counter() - t0
    return {
        "calls": len(lat),
        "errors": errors,
        "wall_s": wall,
        "rps": len(lat) / wall,
        "p50_ms": percentile(lat, 50) * 1e3,
        "p99_ms": percentile(lat, 99) * 1e3,
        "max_ms": max(lat) * 1e3,
    }


WRK_LUA = r"""
-- closed loop: each connection sends its next call as soon as the answer is in (no think time)
local bodies, n, i = {}, 0, 0
for line in io.lines(os.getenv("PHPO_BENCH_BODIES")) do n = n + 1; bodies[n] = line end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("PHPO_BENCH_AUTH")
if auth and auth ~= "" then wrk.headers["Authorization"] = auth end
request = function()
  i = i % n + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'PHPO_WRK {"calls": %d, "errors": %d, "wall_s": %f, "p50_ms": %f, "p99_ms": %f, "max_ms": %f}\n',
    summary.requests, e.connect + e.read + e.write + e.timeout + e.status, summary.duration / 1e6,
    latency:percentile(50) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3))
end
"""


def load_wrk(url: str, token: str | None, n_features: int, seconds: float, clients: int, tmp: Path) -> dict:
    """``wrk`` (C, one thread, ``clients`` connections, each a closed-loop client) for ``seconds``."""
    import json
    import resource
    import subprocess

    import numpy as np

    rows = np.random.default_rng(0).random((64, n_features)).round(6).tolist()
    (tmp / "bodies.jsonl").write_text("".join(json.dumps({"inputs": [r]}) + "\n" for r in rows))
    (tmp / "post.lua").write_text(WRK_LUA)
    env = {
        **os.environ,
        "PHPO_BENCH_BODIES": str(tmp / "bodies.jsonl"),
        "PHPO_BENCH_AUTH": f"Bearer {token}" if token else "",
    }

    def run(secs: float) -> tuple[str, float]:
        """wrk's output and its CPU seconds (getrusage of waited-for children)."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        p = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{clients}",
                f"-d{max(1, round(secs))}s",
                "--timeout",
                "30s",
                "-s",
                str(tmp / "post.lua"),
                url,
            ],
            capture_output=True,
            env=env,
            timeout=secs + 60,
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return (p.stdout + p.stderr).decode(), cpu

    run(1)  # warm-up: the connections, the model's first calls (TorchScript optimises on them)
    out, cpu = run(seconds)
    line = next((ln for ln in out.splitlines() if ln.startswith("PHPO_WRK ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    r = json.loads(line[len("PHPO_WRK ") :])
    r["rps"] = r["calls"] / r["wall_s"]
    r["generator_cpu_s"] = cpu
    return r


def measure(
    name: str,
    url: str,
    token: str | None,
    proc,
    n_features: int,
    plan: list[tuple[int, int]],
    generator: str,
    seconds: float,
    tmp: Path,
) -> list[dict]:
    out = []
    for clients, calls in plan:
        if generator == "wrk":
            # every worker's model loaded and past its first calls before wrk's clock starts (wrk
            # itself cannot wait for that: its clients would time out on a worker still loading)
            asyncio.run(load(url, token, n_features, 4 * clients, clients))
            c0 = cpu_of(proc)
            r = load_wrk(url, token, n_features, seconds, clients, tmp)
        else:
            c0 = cpu_of(proc)
            g0 = time.process_time()
            r = asyncio.run(load(url, token, n_features, calls, clients))
            r["generator_cpu_s"] = time.process_time() - g0
        r["cpu_ms_per_request"] = (cpu_of(proc) - c0) / max(r["calls"], 1) * 1e3
        r["generator_cpu_ms_per_request"] = r.pop("generator_cpu_s") / max(r["calls"], 1) * 1e3
        r.update(service=name, clients=clients, generator=generator)
        log(
            f"{name} {clients} clients ({generator}): {r['rps']:.0f} req/s p50 {r['p50_ms']:.1f} ms "
            f"p99 {r['p99_ms']:.1f} ms max {r['max_ms']:.0f} ms errors {r['errors']} "
            f"CPU/req service {r['cpu_ms_per_request']:.2f} ms generator {r['generator_cpu_ms_per_request']:.2f} ms"
        )
        out.append(r)
    return out


SERVICES = {
    "batching": ("phpo serve (batching)", []),
    "window": ("phpo serve (batching, 2 ms window)", ["--batch-window-ms", "2"]),
    "nobatch": ("phpo serve (no batching)", ["--no-batching"]),
    "mlflow": ("mlflow models serve", None),
}


def main() -> int:
    import shutil

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1,000 calls (wrk: 5 s), 1 and 200 clients")
    ap.add_argument("--workers", type=int, default=2, help="worker processes of each service (default 2)")
    ap.add_argument(
        "--generator",
        choices=["auto", "python", "wrk"],
        default="auto",
        help="load generator: aiohttp coroutines in this process, or wrk (C; one thread); "
        "auto: wrk where it is installed (apt-get install wrk), else python",
    )
    ap.add_argument("--seconds", type=float, default=10.0, help="wrk: seconds per measurement (default 10)")
    ap.add_argument(
        "--services",
        default=",".join(SERVICES),
        help=f"comma-separated, of {', '.join(SERVICES)} (default all)",
    )
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    ap.add_argument("--clients", help="comma-separated client counts (default 1,50,200; --quick 1,200)")
    ap.add_argument(
        "--repeat", type=int, default=1, help="measure each row this many times (median reported)"
    )
    args = ap.parse_args()
    generator = args.generator
    if generator == "auto":
        generator = "wrk" if shutil.which("wrk") else "python"
    elif generator == "wrk" and not shutil.which("wrk"):
        raise SystemExit("--generator wrk: wrk is not installed (apt-get install wrk)")
    calls = 1000 if args.quick else 5000
    seconds = 5.0 if args.quick and args.seconds == 10.0 else args.seconds
    counts = (
        [int(c) for c in args.clients.split(",")]
        if args.clients
        else ([1, 200] if args.quick else [1, 50, 200])
    )
    plan = [
        (c, (200 if args.quick else 500) if c == 1 else calls) for c in counts for _ in range(args.repeat)
    ]
    wanted = args.services.split(",")
    models = {m: MODELS[m] for m in args.models.split(",")}
    info = machine()
    info["busy_elsewhere"] = busy_cpu_elsewhere()
    info["generator"] = generator
    log(f"machine: {info}")
    results: list[dict] = []
    with workdir("serving") as root:
        folders = {m: f for m, f in save_models(root).items() if m in models}
        server = PhpoServer(root / "server").start()
        try:
            token = server.user_token
            for key in wanted:
                label, extra = SERVICES[key]
                if extra is None:
                    continue
                port = free_port()
                lp = root / f"serve-{port}.log"
                proc = start(
                    [
                        PYTHON,
                        "-m",
                        "phpo.serving",
                        "--port",
                        str(port),
                        "--url",
                        server.url,
                        "--mlflow-uri",
                        f"file://{root}/mlruns",
                        "--state-dir",
                        str(root / f"state-{port}"),
                        "--workers",
                        str(args.workers),
                        *extra,
                    ],
                    lp,
                )
                try:
                    wait_http(f"http://127.0.0.1:{port}/health", proc, lp)
                    for model, folder in folders.items():
                        buf = io.BytesIO()
                        with tarfile.open(fileobj=buf, mode="w:gz") as t:
                            t.add(folder, arcname=model)
                        r = httpx.put(
                            f"http://127.0.0.1:{port}/v1/models/{model}",
                            content=buf.getvalue(),
                            headers={"Authorization": f"Bearer {token}"},
                            timeout=120,
                        )
                        assert r.status_code == 201, r.text
                        for row in measure(
                            label,
                            f"http://127.0.0.1:{port}/v1/models/{model}/1/predict",
                            token,
                            proc,
                            MODELS[model][0],
                            plan,
                            generator,
                            seconds,
                            root,
                        ):
                            results.append({**row, "model": model})
                finally:
                    _stop(proc)
            for model, folder in folders.items():
                if "mlflow" not in wanted:
                    break
                port = free_port()
                lp = root / f"mlflow-{port}.log"
                # it runs `uvicorn` from PATH: this environment's
                path = f"{Path(PYTHON).parent}{os.pathsep}{os.environ.get('PATH', '')}"
                proc = start(
                    [
                        PYTHON,
                        "-m",
                        "mlflow",
                        "models",
                        "serve",
                        "-m",
                        str(folder),
                        "--env-manager",
                        "local",
                        "--host",
                        "127.0.0.1",
                        "-p",
                        str(port),
                        "--workers",
                        str(args.workers),
                    ],
                    lp,
                    {"PATH": path},
                )
                try:
                    wait_http(f"http://127.0.0.1:{port}/ping", proc, lp)
                    for row in measure(
                        "mlflow models serve",
                        f"http://127.0.0.1:{port}/invocations",
                        None,
                        proc,
                        MODELS[model][0],
                        plan,
                        generator,
                        seconds,
                        root,
                    ):
                        results.append({**row, "model": model})
                finally:
                    _stop(proc)
        finally:
            server.stop()
    info["busy_elsewhere_after"] = busy_cpu_elsewhere()
    rows = []
    for (model, service, clients), rs in _grouped(results).items():
        med = {
            k: statistics.median(r[k] for r in rs)
            for k in (
                "rps",
                "p50_ms",
                "p99_ms",
                "max_ms",
                "cpu_ms_per_request",
                "generator_cpu_ms_per_request",
            )
        }
        peer = _grouped(results).get((model, "mlflow models serve", clients))
        peer_rps = statistics.median(r["rps"] for r in peer) if peer else None
        rows.append(
            [
                model,
                service,
                clients,
                len(rs),
                sum(r["calls"] for r in rs),
                sum(r["errors"] for r in rs),
                med["rps"],
                med["p50_ms"],
                med["p99_ms"],
                med["max_ms"],
                med["cpu_ms_per_request"],
                med["generator_cpu_ms_per_request"],
                ratio(med["rps"], peer_rps),
            ]
        )
    print_table(
        f"serving: {args.workers} workers each, load generator {generator} on the same {info['cpus']} CPUs "
        f"(busy elsewhere {info['busy_elsewhere']:.0%} before, {info['busy_elsewhere_after']:.0%} after); "
        f"medians of {args.repeat} run(s)",
        [
            "model",
            "service",
            "clients",
            "runs",
            "calls",
            "errors",
            "req/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "CPU ms/req",
            "generator CPU ms/req",
            "req/s vs mlflow",
        ],
        rows,
    )
    save_result("serving", {"machine": info, "results": results})
    return 0


def _grouped(results: list[dict]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in results:
        out.setdefault((r["model"], r["service"], r["clients"]), []).append(r)
    return out


if __name__ == "__main__":
    sys.exit(main())
