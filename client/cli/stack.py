"""The embedded stack: one phpo server on SQLite and one local agent, as child processes.

``phpo up`` runs it in the foreground until Ctrl-C; ``phpo demo`` runs it in a temporary
directory around one task. The children are ``python -m phpo.server`` and
``python -m phpo.evaluation_container`` exactly as an operator would start them on separate
machines, so the embedded stack exercises the same code paths as a real deployment. Each runs in
its own process group: Ctrl-C reaches only this process, which then stops the agent first (so
it can hand back its jobs) and the server last.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import tomli_w
from phpo.schemas.payload import experiment_name

from ..config import config_path, save_config
from .upstream import CliError

DEFAULT_PORT = 8765
DEFAULT_SLOTS = 2
TOKENS_FILE = "stack-tokens.toml"
AGENT_TOKEN_FILE = "agent.token"

SERVER_MODULES = ("fastapi", "uvicorn", "sqlalchemy", "alembic")
AGENT_MODULES = ("tenacity", "psutil")


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "phpo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    """Whether something listens on (or holds) ``port``. SO_REUSEADDR as the servers bind: the
    connections of a stack stopped a moment ago linger in TIME_WAIT for a minute, and they must
    not make a restart fail with "port in use"."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


STACK_FILE = "stack.toml"  # what a data directory's stack keeps across restarts (the MLflow port)
UP_FILE = "up.json"  # the running `phpo up` of a data directory: pid, urls (for phpo down)


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def stable_mlflow_port(data_dir: Path, wanted: int | None = None) -> int:
    """The MLflow port of this data directory: ``wanted``, else the one it had last time (so
    dashboard links and the runs' URLs stay valid), else a free one. A saved port that something
    else took meanwhile is given up for a free one."""
    if wanted:
        return wanted
    saved = _read_toml(data_dir / STACK_FILE).get("mlflow_port")
    if isinstance(saved, int) and 0 < saved < 65536 and not port_in_use(saved):
        return saved
    return free_port()


def check_installed() -> None:
    """A clear error, naming the extra to install, before any process is started."""
    missing = [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]
    if missing or importlib.util.find_spec("phpo.server.cli") is None:
        raise CliError(
            f"the embedded stack needs the phpo server ({', '.join(missing) or 'phpo.server'} "
            "missing): pip install 'phpo[server,agent]'"
        )
    missing = [m for m in AGENT_MODULES if importlib.util.find_spec(m) is None]
    if missing or importlib.util.find_spec("phpo.evaluation_container.cli") is None:
        raise CliError(
            f"the embedded stack needs the phpo agent ({', '.join(missing) or 'phpo.evaluation_container'} "
            "missing): pip install 'phpo[server,agent]'"
        )


def _tail(path: Path, n: int = 30) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


class Stack:
    """Server + agent for one data directory. Use as a context manager or start()/stop()."""

    def __init__(
        self,
        data_dir: str | Path,
        port: int | None = None,
        slots: int = DEFAULT_SLOTS,
        site: str = "local",
        python: str = sys.executable,
        agent_args: list[str] | None = None,
        mlflow: bool = False,
        mlflow_port: int | None = None,
        serve_port: int | None = None,
    ):
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.slots = slots
        self.site = site
        self.python = python
        self.agent_args = list(agent_args or [])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = self.data_dir / "logs"
        self.agent_dir = self.data_dir / "agent"
        self.server: subprocess.Popen | None = None
        self.agent: subprocess.Popen | None = None
        self.mlflow: subprocess.Popen | None = None
        self.mlflow_port = stable_mlflow_port(self.data_dir, mlflow_port) if mlflow else None
        self.mlflow_url = f"http://127.0.0.1:{self.mlflow_port}" if mlflow else None
        self.user_token: str | None = None
        self.agent_token: str | None = None
        self.user_name = _user_name()
        self.keeper: subprocess.Popen | None = None
        # phpo serve (with MLflow only: it serves the registry's models)
        self.serve: subprocess.Popen | None = None
        self.serve_url = f"http://127.0.0.1:{serve_port}" if serve_port and mlflow else None
        self.serve_port = serve_port if self.serve_url else None

    # --- lifecycle --------------------------------------------------------------------

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        self.agent_dir.mkdir(exist_ok=True)
        if port_in_use(self.port):
            raise CliError(
                f"port {self.port} on 127.0.0.1 is in use (another `phpo up`?); choose one with --port",
                code=1,
            )
        if self.serve_port and port_in_use(self.serve_port):
            raise CliError(
                f"the phpo serve port {self.serve_port} on 127.0.0.1 is in use; choose one with "
                "--serve-port (or --no-serve)",
                code=1,
            )
        if self.mlflow_port and port_in_use(self.mlflow_port):
            raise CliError(
                f"the MLflow port {self.mlflow_port} on 127.0.0.1 is in use; choose one with --mlflow-port",
                code=1,
            )
        try:
            self.start_keeper()
            if self.mlflow_url:
                self.start_mlflow()
                self.announce("mlflow", self.mlflow)
                self.save_stack_file()
            self.start_server()
            self.ensure_tokens()
            self.start_agent()
            self.announce("agent", self.agent)
            if self.serve_url:
                self.start_serve()
                self.announce("serve", self.serve)
        except BaseException:
            self.stop()
            raise

    def start_keeper(self) -> None:
        """The process that stops the children if this one dies without stopping them (see
        :mod:`phpo.client.cli.keeper`)."""
        with open(self.log_dir / "keeper.log", "ab") as log:
            self.keeper = subprocess.Popen(
                [self.python, "-m", "phpo.client.cli.keeper"],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )

    def announce(self, name: str, proc: subprocess.Popen | None) -> None:
        """Tell the keeper about a child (its process group id is its pid: a session of its own)."""
        if self.keeper is None or self.keeper.stdin is None or proc is None:
            return
        try:
            self.keeper.stdin.write(f"{name} {proc.pid}\n".encode())
            self.keeper.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass

    def save_stack_file(self) -> None:
        path = self.data_dir / STACK_FILE
        data = _read_toml(path)
        data["mlflow_port"] = self.mlflow_port
        tmp = path.with_suffix(".tmp")
        tmp.write_text(tomli_w.dumps(data))
        tmp.replace(path)

    def start_mlflow(self) -> None:
        """An MLflow tracking server (SQLite + artifacts under DATA_DIR/mlflow). Not waited for:
        the server's MLflow bridge retries until it answers (~6 s), so startup stays fast."""
        d = self.data_dir / "mlflow"
        d.mkdir(exist_ok=True)
        log = open(self.log_dir / "mlflow.log", "ab")  # noqa: SIM115 - the child keeps it
        self.mlflow = subprocess.Popen(
            [
                self.python,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{d / 'mlflow.db'}",
                "--artifacts-destination",
                str(d / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.mlflow_port),
                "--workers",
                "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        log.close()

    def start_server(self) -> None:
        log = open(self.log_dir / "server.log", "ab")
        self.server = subprocess.Popen(
            [
                self.python,
                "-m",
                "phpo.server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                *(["--mlflow-uri", self.mlflow_url] if self.mlflow_url else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.announce("server", self.server)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise CliError(
                    f"the phpo server exited with code {self.server.returncode}; its log "
                    f"({self.log_dir / 'server.log'}) ends with:\n{_tail(self.log_dir / 'server.log')}",
                    code=1,
                )
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise CliError(
            f"the phpo server did not answer on {self.url} within 90 s; see {self.log_dir / 'server.log'}",
            code=1,
        )

    def ensure_tokens(self) -> None:
        """Reuse this data directory's tokens when the server still knows them, else create them
        with ``python -m phpo.server create-token`` (the same command an operator uses)."""
        path = self.data_dir / TOKENS_FILE
        saved: dict[str, str] = {}
        if path.exists():
            try:
                saved = tomllib.loads(path.read_text())
            except (OSError, tomllib.TOMLDecodeError):
                saved = {}
        user = saved.get("user_token")
        agent = saved.get("agent_token")
        if not (user and self._token_role(user) == "user"):
            user = self._create_token(saved.get("user_name") or self.user_name, "user")
        if not (agent and self._token_role(agent) == "agent"):
            agent = self._create_token("local-agent", "agent")
        self.user_token, self.agent_token = user, agent
        tmp = path.with_suffix(".tmp")
        tmp.write_text(tomli_w.dumps({"user_name": self.user_name, "user_token": user, "agent_token": agent}))
        tmp.chmod(0o600)
        tmp.replace(path)

    def _token_role(self, token: str) -> str | None:
        try:
            r = httpx.get(self.url + "/api/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        except httpx.TransportError:
            return None
        if r.status_code != 200:
            return None
        try:
            return str(r.json().get("role"))
        except ValueError:
            return None

    def _create_token(self, name: str, role: str) -> str:
        last = ""
        for attempt in range(3):
            n = name if attempt == 0 else f"{name}-{int(time.time())}-{attempt}"
            p = subprocess.run(
                [
                    self.python,
                    "-m",
                    "phpo.server",
                    "create-token",
                    "--name",
                    n,
                    "--role",
                    role,
                    "--data-dir",
                    str(self.data_dir),
                ],
                capture_output=True,
                text=True,
                timeout=120,
                stdin=subprocess.DEVNULL,
            )
            token = p.stdout.strip()
            if p.returncode == 0 and token:
                return token
            last = p.stderr.strip() or p.stdout.strip()
        raise CliError(f"could not create a {role} token: {last}", code=1)

    def start_agent(self) -> None:
        # the token goes in a file only the user can read, never on the agent's command line
        # (which every process of the machine can read in /proc/PID/cmdline)
        token_file = self.data_dir / AGENT_TOKEN_FILE
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(str(self.agent_token))
        log = open(self.log_dir / "agent.log", "ab")
        self.agent = subprocess.Popen(
            [
                self.python,
                "-m",
                "phpo.evaluation_container",
                "--server",
                self.url,
                "--token-file",
                str(token_file),
                "--site",
                self.site,
                "--slots",
                str(self.slots),
                "--workdir",
                str(self.agent_dir),
                *self.agent_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        time.sleep(0.2)
        if self.agent.poll() is not None:
            raise CliError(
                f"the phpo agent exited with code {self.agent.returncode}; its log "
                f"({self.log_dir / 'agent.log'}) ends with:\n{_tail(self.log_dir / 'agent.log')}",
                code=1,
            )

    def start_serve(self) -> None:
        """``phpo serve`` for the registry's models: it starts with none and serves what users
        name (``POST /v1/models``) or upload; tokens are this server's."""
        log = open(self.log_dir / "serve.log", "ab")  # noqa: SIM115 - the child keeps it
        self.serve = subprocess.Popen(
            [
                self.python,
                "-m",
                "phpo.serving",
                "--url",
                self.url,
                "--mlflow-uri",
                str(self.mlflow_url),
                "--port",
                str(self.serve_port),
                "--state-dir",
                str(self.data_dir / "serve"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={k: v for k, v in os.environ.items() if k != "PHPO_TOKEN"},
        )
        log.close()

    def dead(self) -> str | None:
        """A sentence naming a child that exited on its own (with its log's end), else None."""
        for name, proc in (
            ("agent", self.agent),
            ("server", self.server),
            ("mlflow", self.mlflow),
            ("serve", self.serve),
        ):
            if proc is not None and proc.poll() is not None:
                log = self.log_dir / f"{name}.log"
                return f"the {name} exited with code {proc.returncode}; {log} ends with:\n{_tail(log)}"
        return None

    def stop(self, grace: float = 30.0) -> None:
        """Agent first (it hands back its jobs), then the server, then MLflow; SIGKILL after ``grace`` s.
        The keeper goes last: it finds nothing left to stop."""
        try:
            self._stop_children(grace)
        finally:
            if self.keeper is not None:
                if self.keeper.stdin is not None:
                    with contextlib.suppress(OSError):
                        self.keeper.stdin.close()
                try:
                    self.keeper.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.keeper.kill()
                    self.keeper.wait()

    def _stop_children(self, grace: float) -> None:
        for proc in (self.agent, self.serve, self.server, self.mlflow):
            if proc is None or proc.poll() is not None:
                continue
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()


def _user_name() -> str:
    try:
        name = getpass.getuser()
    except Exception:  # noqa: BLE001
        name = ""
    return "".join(c for c in name if c.isalnum() or c in "-_.") or "user"


class _Stop(Exception):
    pass


def _raise_stop(signum, frame) -> None:  # noqa: ARG001
    raise _Stop()


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _say(console, text: str) -> None:
    """Print, unless the terminal is gone (after a SIGHUP): stopping must go on regardless."""
    with contextlib.suppress(OSError, ValueError):
        console.print(text)


def _process_started(pid: int) -> float | None:
    """The start time of a live (not zombie) process, or None."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc.create_time()
    except psutil.Error:
        return None


def running_up(data_dir: Path) -> dict | None:
    """What up.json says of the `phpo up` that runs for ``data_dir``, if it still runs (the start
    time must match: a pid may have been reused since)."""
    try:
        info = json.loads((data_dir / UP_FILE).read_text())
        pid, started = int(info["pid"]), float(info["started"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    now_started = _process_started(pid)
    return info if now_started is not None and abs(now_started - started) < 1.0 else None


def _write_up_file(stack: Stack, config: Path | None) -> Path:
    path = stack.data_dir / UP_FILE
    info = {
        "pid": os.getpid(),
        "started": _process_started(os.getpid()),
        "url": stack.url,
        "mlflow_url": stack.mlflow_url,
        "serve_url": stack.serve_url,
        "data_dir": str(stack.data_dir),
        "config": str(config or ""),
        "logs": str(stack.log_dir),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    tmp.replace(path)
    return path


def _data_dir(args: argparse.Namespace) -> Path:
    return (Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()).resolve()


def cmd_up(args: argparse.Namespace) -> int:
    """``phpo up``: the stack in the foreground until Ctrl-C (SIGINT), SIGTERM or SIGHUP; with
    ``--detach`` in the background until ``phpo down``."""
    from .commands import err_console, out_console

    check_installed()
    data_dir = _data_dir(args)
    other = running_up(data_dir)
    if other:
        raise CliError(
            f"phpo up already runs for {data_dir} (pid {other['pid']}, server {other['url']}); "
            "`phpo down` stops it",
            code=1,
        )
    if getattr(args, "detach", False):
        return _detach(args, data_dir)
    mlflow = not getattr(args, "no_mlflow", False) and importlib.util.find_spec("mlflow") is not None
    serve = (
        mlflow
        and not getattr(args, "no_serve", False)
        and importlib.util.find_spec("prometheus_client") is not None
        and importlib.util.find_spec("phpo.serving") is not None
    )
    stack = Stack(
        data_dir,
        port=args.port or DEFAULT_PORT,
        slots=args.slots or DEFAULT_SLOTS,
        mlflow=mlflow,
        mlflow_port=getattr(args, "mlflow_port", None),
        serve_port=(getattr(args, "serve_port", None) or free_port()) if serve else None,
    )
    out, err = out_console(), err_console()
    # explicit for SIGINT too: a process started in the background by a script inherits SIGINT
    # ignored, and `kill -INT` must still stop the stack cleanly; SIGHUP: the terminal closed
    previous = {sig: signal.signal(sig, _raise_stop) for sig in STOP_SIGNALS}
    up_file: Path | None = None
    try:
        err.print(f"starting the phpo server on {stack.url} (data in {stack.data_dir}) ...")
        stack.start()
        config = None if args.no_config else save_config(stack.url, str(stack.user_token))
        if config and stack.mlflow_url:
            save_mlflow_url(config, stack.mlflow_url)
        up_file = _write_up_file(stack, config)
        out.print(
            f"[bold green]phpo is up[/]\n"
            f"  server  {stack.url}   SQLite + artifacts in {stack.data_dir}\n"
            f"          log {stack.log_dir / 'server.log'}\n"
            f"  agent   site '{stack.site}', {stack.slots} slots, work dirs in {stack.agent_dir}\n"
            f"          log {stack.log_dir / 'agent.log'}\n"
            + (
                f"  mlflow  {stack.mlflow_url}   every point is a run; phpo dashboard ID\n"
                f"          log {stack.log_dir / 'mlflow.log'}\n"
                if stack.mlflow_url
                else ""
            )
            + (
                f"  serve   {stack.serve_url}   registered models over HTTP (docs/serving.md)\n"
                f"          log {stack.log_dir / 'serve.log'}\n"
                if stack.serve_url
                else ""
            )
            + f"  user    '{stack.user_name}'"
            + (f"; url + token written to {config}" if config else f"; token {stack.user_token}")
            + "\n"
            "In another shell: phpo list, phpo --loadJson conf.json, phpo wait ID ...\n"
            "Ctrl-C (or phpo down) stops the agent, then the server."
        )
        while True:
            problem = stack.dead()
            if problem:
                _say(err, f"[red]error:[/] {problem}")
                return 1
            time.sleep(0.5)
    except (KeyboardInterrupt, _Stop):
        _say(err, "stopping the agent, then the server ...")
        return 0
    finally:
        for sig in previous:  # a second Ctrl-C must not leave the children half-stopped
            signal.signal(sig, signal.SIG_IGN)
        try:
            stack.stop()
            if up_file is not None:
                up_file.unlink(missing_ok=True)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        _say(err, "stopped.")


def _detach(args: argparse.Namespace, data_dir: Path, timeout: float = 120.0) -> int:
    """Start ``phpo up`` (without --detach) in a session of its own, its output in
    DATA_DIR/logs/up.log; return once it is up (its up.json names it), or with its log's end."""
    from .commands import out_console

    argv = [sys.executable, "-m", "phpo.client.cli.main", "up", "--data-dir", str(data_dir)]
    for flag, value in (
        ("--port", args.port),
        ("--slots", args.slots),
        ("--mlflow-port", getattr(args, "mlflow_port", None)),
        ("--serve-port", getattr(args, "serve_port", None)),
    ):
        if value:
            argv += [flag, str(value)]
    argv += [
        f
        for f, on in (
            ("--no-config", args.no_config),
            ("--no-mlflow", args.no_mlflow),
            ("--no-serve", getattr(args, "no_serve", False)),
        )
        if on
    ]
    log_dir = data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "up.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = running_up(data_dir)
        if info and int(info["pid"]) == proc.pid:
            out_console().print(
                f"[bold green]phpo is up[/] in the background (pid {proc.pid})\n"
                f"  server  {info['url']}   data in {data_dir}\n"
                + (f"  mlflow  {info['mlflow_url']}\n" if info.get("mlflow_url") else "")
                + (f"  url + token written to {info['config']}\n" if info.get("config") else "")
                + f"  logs    {log_dir} (this stack's own output: {log_path})\n"
                + "phpo down"
                + (f" --data-dir {data_dir}" if args.data_dir else "")
                + " stops it."
            )
            return 0
        if proc.poll() is not None:
            raise CliError(
                f"phpo up exited with code {proc.returncode}; {log_path} ends with:\n{_tail(log_path)}",
                code=1,
            )
        time.sleep(0.2)
    proc.terminate()
    raise CliError(f"phpo up was not up within {timeout:g} s; see {log_path}", code=1)


def cmd_down(args: argparse.Namespace) -> int:
    """``phpo down``: stop the `phpo up` of a data directory (detached or in another shell)."""
    from .commands import EXIT_TIMEOUT, err_console

    data_dir = _data_dir(args)
    info = running_up(data_dir)
    err = err_console()
    if info is None:
        err.print(f"no phpo up runs for {data_dir}; nothing to stop")
        return 0
    pid = int(info["pid"])
    err.print(f"stopping phpo up (pid {pid}, server {info['url']}): the agent, then the server ...")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if _process_started(pid) is None:
            err.print("stopped.")
            return 0
        time.sleep(0.2)
    err.print(
        f"[yellow]phpo up (pid {pid}) is still stopping after {args.timeout:g} s[/]; "
        f"its log: {data_dir / 'logs'}"
    )
    return EXIT_TIMEOUT


def save_mlflow_url(config: Path, url: str) -> None:
    """Add ``mlflow_url`` to the client config ``phpo up`` wrote, for ``phpo dashboard``."""
    data = tomllib.loads(config.read_text()) if config.exists() else {}
    data["mlflow_url"] = url
    tmp = config.with_suffix(".tmp")
    tmp.write_text(tomli_w.dumps(data))
    tmp.chmod(0o600)
    tmp.replace(config)


def mlflow_url(given: str | None) -> str | None:
    """--mlflow-uri, else PHPO_MLFLOW_URI / MLFLOW_TRACKING_URI, else the config `phpo up` wrote."""
    url = given or os.environ.get("PHPO_MLFLOW_URI") or os.environ.get("MLFLOW_TRACKING_URI")
    if not url:
        try:
            url = tomllib.loads(config_path().read_text()).get("mlflow_url")
        except (OSError, tomllib.TOMLDecodeError):
            url = None
    return url.rstrip("/") if url else None


VIEW_KEY = "phpo"  # the shared view phpo keeps in each task's experiment (tag mlflow.sharedViewState.phpo)


def runs_view(url: str, experiment_id: str, directions: list[str] | None, segmented: bool) -> str:
    """The link to the experiment's runs table, best points first, with the loss and the
    parameters as columns. Sorting fits in the URL (``orderByKey``/``orderByAsc``); the columns
    do not: the MLflow UI takes them from a shared view, an experiment tag
    ``mlflow.sharedViewState.<key>`` holding the page state as JSON and opened with
    ``?viewStateShareKey=<key>``. The view is rewritten at every call (new params show up);
    where it cannot be written (an MLflow that refuses it), the link sorts only. Segmented tasks:
    the point runs only (not the segments' parent runs, which have no loss), with the segment as
    a column."""
    api = f"{url}/api/2.0/mlflow"
    asc = (directions or ["minimize"])[0] != "maximize"
    order = {"orderByKey": "metrics.`loss`", "orderByAsc": asc}
    base = f"{url}/#/experiments/{experiment_id}/runs"
    point_runs = "tags.`phpo.point_id` LIKE '%'"
    try:
        found = httpx.post(
            f"{api}/runs/search",
            timeout=10,
            json={"experiment_ids": [experiment_id], "filter": point_runs, "max_results": 200},
        )
        runs = found.json().get("runs", []) if found.status_code == 200 else []
        params: dict[str, None] = {}
        losses: dict[str, None] = {"loss": None}
        for run in runs:
            for p in run.get("data", {}).get("params", []):
                params.setdefault(p["key"])
            for m in run.get("data", {}).get("metrics", []):
                if m["key"].startswith("loss_"):
                    losses.setdefault(m["key"])
        columns = [f"metrics.`{k}`" for k in losses] + [f"params.`{k}`" for k in sorted(params)[:50]]
        state: dict[str, Any] = {**order, "selectedColumns": columns}
        if segmented:
            state["searchFilter"] = point_runs
            state["selectedColumns"] = ["tags.`phpo.segment`", *columns]
        put = httpx.post(
            f"{api}/experiments/set-experiment-tag",
            timeout=10,
            json={
                "experiment_id": experiment_id,
                "key": f"mlflow.sharedViewState.{VIEW_KEY}",
                "value": json.dumps(state),
            },
        )
        if put.status_code == 200:
            return f"{base}?viewStateShareKey={VIEW_KEY}"
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        pass
    return f"{base}?{urlencode({k: str(v).lower() if isinstance(v, bool) else v for k, v in order.items()})}"


def cmd_dashboard(args: argparse.Namespace, make_client) -> int:
    """``phpo dashboard ID``: the MLflow runs table of task ID (its experiment is named after its outDS)."""
    url = mlflow_url(args.mlflow_uri)
    if not url or not url.startswith(("http://", "https://")):
        raise CliError(
            "no MLflow tracking server known: start the stack with `phpo up`, or give "
            "--mlflow-uri / PHPO_MLFLOW_URI (an http(s) URL)"
        )
    with make_client() as client:
        task = client.task(args.id)
    name = experiment_name(args.id, task.spec)
    try:
        r = httpx.get(
            f"{url}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": name}, timeout=10
        )
    except httpx.TransportError as e:
        raise CliError(f"MLflow at {url} does not answer: {e}", code=5) from None  # unreachable
    if r.status_code != 200:
        raise CliError(
            f"no MLflow experiment {name!r} at {url} yet (the server creates it with the task's first point)",
            code=4,
        )  # nothing to show yet
    # the runs table: MLflow 3's default experiment page is the GenAI overview, which lists no runs
    experiment_id = r.json()["experiment"]["experiment_id"]
    link = runs_view(
        url, experiment_id, getattr(task.spec, "directions", None), bool(getattr(task.spec, "segments", None))
    )
    if getattr(args, "json", False):  # one object, like every other --json
        from .commands import print_json

        print_json(
            {
                "task_id": task.id,
                "experiment": name,
                "experiment_id": experiment_id,
                "mlflow_url": url,
                "url": link,
            }
        )
    else:
        print(link)
    if args.open:
        import webbrowser

        webbrowser.open(link)
    return 0


__all__ = [
    "Stack",
    "check_installed",
    "cmd_down",
    "cmd_up",
    "config_path",
    "default_data_dir",
    "free_port",
    "running_up",
]
