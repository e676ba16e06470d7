"""What every benchmark script shares: real phpo processes on 127.0.0.1, fresh databases, the
peers' separate virtual environment, and the small statistics the tables need.

The server and the agent are started exactly as an operator starts them
(``python -m phpo.server`` / ``python -m phpo.evaluation_container``), so the figures include
everything a deployment pays: HTTP, JSON, the database, the HPO manager thread.

Ray Tune and Optuna live in ``benchmarks/.peers-venv`` (gitignored), created on first use, so
installing the peers never changes the project's own environment; the peer halves of the
benchmarks run as subprocesses of that environment's Python and print one JSON line.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"
PEERS_VENV = BENCH / ".peers-venv"
PEERS_PY = PEERS_VENV / "bin" / "python"
PEERS_REQUIREMENTS = ["ray[tune]", "optuna", "psycopg[binary]"]
PG_ADMIN_DSN = os.environ.get("PHPO_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
PYTHON = sys.executable  # the project's venv (``make bench`` runs $(BIN)/python)


def log(msg: str) -> None:
    """Progress on stderr, so stdout stays the figures."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the machine


def machine() -> dict[str, Any]:
    """What the figures were measured on, including the load other processes put on it."""
    mem_gb = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 2**20, 1)
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "memory_gb": mem_gb,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def busy_cpu_elsewhere(seconds: float = 1.0) -> float:
    """Share of the machine's CPU used by other processes over ``seconds`` (0..1): the load the
    figures were taken under, since other sessions share this machine."""
    import psutil

    return round(psutil.cpu_percent(interval=seconds) / 100.0, 2)


# --------------------------------------------------------------------------- databases


def pg_available() -> str | None:
    """``None`` when the benchmark PostgreSQL answers, else why not."""
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_DSN, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as e:  # noqa: BLE001 - any failure means "no PostgreSQL here"
        return f"{type(e).__name__}: {e}".strip()
    return None


@contextlib.contextmanager
def fresh_pg_database(prefix: str) -> Iterator[str]:
    """A new empty database on the benchmark server, dropped afterwards; yields its URL
    (``postgresql://...``, which both phpo and Optuna/SQLAlchemy+psycopg accept)."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --------------------------------------------------------------------------- phpo processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen | None, grace: float = 20.0) -> None:
    """SIGTERM to the child's own process group (it was started in a new session), then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


class PhpoServer:
    """``python -m phpo.server`` on a free port of 127.0.0.1, with a user and an agent token."""

    def __init__(self, data_dir: Path, database_url: str | None = None, extra: list[str] | None = None):
        self.data_dir = Path(data_dir)
        self.database_url = database_url
        self.extra = list(extra or [])
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir / "server.log"
        self.user_token = ""
        self.agent_token = ""

    def _db_args(self) -> list[str]:
        args = ["--data-dir", str(self.data_dir)]
        if self.database_url:
            args += ["--database-url", self.database_url]
        return args

    def start(self) -> PhpoServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            entry = ["-m", "phpo.server"]
            self.proc = subprocess.Popen(
                [
                    PYTHON,
                    *entry,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "warning",
                    *self._db_args(),
                    *self.extra,
                ],
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"phpo server exited ({self.proc.returncode}):\n{_tail(self.log_path)}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.url + "/api/v1/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"phpo server did not answer within 120 s:\n{_tail(self.log_path)}")
        self.user_token = self.token("bench-user", "user")
        self.agent_token = self.token("bench-agent", "agent")
        return self

    def token(self, name: str, role: str) -> str:
        p = subprocess.run(
            [
                PYTHON,
                "-m",
                "phpo.server",
                "create-token",
                "--name",
                f"{name}-{uuid.uuid4().hex[:6]}",
                "--role",
                role,
                *self._db_args(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if p.returncode != 0 or not p.stdout.strip():
            raise RuntimeError(f"create-token failed: {p.stderr.strip()}")
        return p.stdout.strip()

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far (all its threads)."""
        import psutil

        assert self.proc is not None
        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system

    def client(self):
        from phpo.client import Client

        return Client(self.url, self.user_token, timeout=120)

    def stop(self) -> None:
        _stop(self.proc)

    def __enter__(self) -> PhpoServer:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PhpoAgent:
    """``python -m phpo.evaluation_container`` with ``slots`` slots, run as shipped (default
    poll interval unless ``extra`` says otherwise)."""

    def __init__(self, server: PhpoServer, slots: int, workdir: Path, extra: list[str] | None = None):
        self.server = server
        self.slots = slots
        self.workdir = Path(workdir)
        self.extra = list(extra or [])
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir.parent / f"{self.workdir.name}.log"

    def start(self) -> PhpoAgent:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                [
                    PYTHON,
                    "-m",
                    "phpo.evaluation_container",
                    "--server",
                    self.server.url,
                    "--site",
                    "local",
                    "--slots",
                    str(self.slots),
                    "--workdir",
                    str(self.workdir),
                    "--gpus",
                    "none",
                    "--log-level",
                    "WARNING",
                    "--grace-seconds",
                    "5",
                    *self.extra,
                ],
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, "PHPO_TOKEN": self.server.agent_token},
            )
        time.sleep(0.3)
        if self.proc.poll() is not None:
            raise RuntimeError(f"phpo agent exited ({self.proc.returncode}):\n{_tail(self.log_path)}")
        return self

    def cpu_seconds(self) -> float:
        """CPU of the agent process and its payloads so far (children that were reaped count)."""
        import psutil

        assert self.proc is not None
        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system + t.children_user + t.children_system

    def stop(self) -> None:
        _stop(self.proc)

    def __enter__(self) -> PhpoAgent:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class TaskRun:
    """One task driven to its end and the server's own timestamps of it."""

    task_id: int
    state: str
    evaluated: int
    failed: int
    wall_s: float  # task created_at -> finished_at, both stamped by the server
    timed_out: bool = False
    points: list[Any] = field(default_factory=list)


def run_task(
    client: Any, timeout: float, poll: float = 0.5, fetch_points: bool = False, **spec: Any
) -> TaskRun:
    """Submit, wait (bounded by ``timeout``), and read the server's timestamps. A task still
    running at the timeout is cancelled, and reported as timed out."""
    task = client.submit(directory=None, **spec)  # no sandbox: the payloads are absolute paths
    deadline = time.monotonic() + timeout
    timed_out = False
    while True:
        t = client.task(task.id)
        if t.state.value in ("finished", "failed", "cancelled"):
            break
        if time.monotonic() >= deadline:
            timed_out = True
            with contextlib.suppress(Exception):
                client.cancel(task.id)
            t = client.task(task.id)
            break
        time.sleep(poll)
    end = t.finished_at or datetime.now(UTC)
    points = list(client.points(task.id)) if fetch_points else []
    return TaskRun(
        task_id=t.id,
        state=t.state.value,
        evaluated=t.counts.evaluated,
        failed=t.counts.failed,
        wall_s=(end - t.created_at).total_seconds(),
        timed_out=timed_out,
        points=points,
    )


# --------------------------------------------------------------------------- the HTTP-only agent


@dataclass
class LoopStats:
    completed: int = 0
    empty_acquires: int = 0
    errors: int = 0
    first_error: str | None = None


def http_agent_loop(
    url: str,
    token: str,
    threads: int,
    stop: threading.Event,
    deadline: float,
    loss: Callable[[dict], float] = lambda p: 0.0,
) -> LoopStats:
    """``threads`` agent slots that lease a job and complete it at once over plain HTTP, with no
    payload process: what the server alone can sustain. Raw httpx and dicts (no pydantic) keep
    the load generator's own CPU small, since it shares the 2 cores with the server."""
    stats = LoopStats()
    lock = threading.Lock()
    headers = {"Authorization": f"Bearer {token}"}

    def slot(i: int) -> None:
        # as the real agent does: a long-polling acquire, then every complete carries the results
        # and leases the slot's next job (one request per job)
        body = {
            "agent": f"bench-http-{os.getpid()}-{i}",
            "site": "local",
            "kinds": ["evaluation"],
            "wait_s": 1.0,
        }
        done = empty = errs = 0
        job = None
        with httpx.Client(base_url=url + "/api/v1", headers=headers, timeout=60) as h:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    if job is None:
                        r = h.post("/jobs/acquire", json=body)
                        if r.status_code == 204:
                            empty += 1
                            continue
                        r.raise_for_status()
                        job = r.json()
                    results = [
                        {"point_id": p["point_id"], "status": 0, "loss": loss(p["params"])}
                        for p in job["points"]
                    ]
                    c = h.post(f"/jobs/{job['id']}/complete", json={"results": results, "next": body})
                    c.raise_for_status()
                    done += len(results)
                    job = c.json().get("next_job")
                except Exception as e:  # noqa: BLE001 - counted and shown, the loop goes on
                    errs += 1
                    with lock:
                        stats.first_error = stats.first_error or f"{type(e).__name__}: {e}"
                    stop.wait(0.05)
        with lock:
            stats.completed += done
            stats.empty_acquires += empty
            stats.errors += errs

    ts = [threading.Thread(target=slot, args=(i,), daemon=True) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=max(1.0, deadline - time.monotonic() + 70))
    return stats


# --------------------------------------------------------------------------- the peers' venv


_PEERS_CHECKED: list[bool] = []


def ensure_peers_venv() -> Path:
    """Create ``benchmarks/.peers-venv`` with Ray Tune and Optuna when missing; returns its python."""
    if _PEERS_CHECKED:
        return PEERS_PY
    if PEERS_PY.exists():
        p = subprocess.run(
            [str(PEERS_PY), "-c", "import ray.tune, optuna, psycopg"], capture_output=True, check=False
        )
        if p.returncode == 0:
            _PEERS_CHECKED.append(True)  # once per process: the import check costs seconds of CPU
            return PEERS_PY
    log(f"creating {PEERS_VENV} with {', '.join(PEERS_REQUIREMENTS)} (once; a few minutes)")
    base = shutil.which("python3") or sys.executable
    if not PEERS_PY.exists():
        subprocess.run([base, "-m", "venv", str(PEERS_VENV)], check=True)
    subprocess.run([str(PEERS_PY), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([str(PEERS_PY), "-m", "pip", "install", "-q", *PEERS_REQUIREMENTS, "psutil"], check=True)
    _PEERS_CHECKED.append(True)
    return PEERS_PY


def run_peer(script: str, args: list[str], timeout: float) -> dict[str, Any]:
    """Run ``benchmarks/peers/<script>`` in the peers' venv; it prints one JSON object last."""
    py = ensure_peers_venv()
    cmd = [str(py), str(BENCH / "peers" / script), *args]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    try:
        p = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"{script} did not finish within {timeout:g} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"error": f"{script} exited {p.returncode}: {p.stderr.strip()[-2000:]}"}
    return json.loads(lines[-1])


# --------------------------------------------------------------------------- statistics, output


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty list."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if math.isnan(x):
            return "-"
        return f"{x:.{digits}g}" if abs(x) < 10**digits else f"{x:.0f}"
    return str(x)


def print_table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table on stdout (and returned, for the README)."""
    cells = [[fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    lines = [
        f"### {title}",
        "",
        "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
        "| " + " | ".join("-" * w for w in widths) + " |",
    ]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    return text


def save_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)
    return path


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix=f"phpo-bench-{prefix}-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
