"""``phpo server``: run the server, or ``phpo server create-token``.

``main(argv)`` is what ``python -m phpo.server`` and the ``phpo server ...`` subcommand call.
Command-line options override ``PHPO_*`` environment variables (pydantic-settings).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from phpo.schemas.api import Role


def _db_options(p: argparse.ArgumentParser, default: object = None) -> None:
    p.add_argument("--data-dir", default=default, help="directory for the SQLite database and artifacts "
                                                       "(default $PHPO_DATA_DIR or ~/.local/share/phpo)")
    p.add_argument("--database-url", default=default,
                   help="e.g. postgresql+psycopg://user@host/db (default: SQLite in the data dir)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="phpo server", description="Run the phpo server (FastAPI + uvicorn).")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8080)")
    _db_options(p)
    p.add_argument("--lease-seconds", type=float, help="job lease length; a job without heartbeat for this "
                                                       "long is lost (default 60)")
    p.add_argument("--reaper-interval", type=float, help="seconds between checks for expired leases "
                                                         "(default lease/4, at most 5)")
    p.add_argument("--artifact-url", help="directory or fsspec URL for artifacts (default DATA_DIR/artifacts)")
    p.add_argument("--max-upload-mb", type=float, help="largest accepted upload in MB (default 2048)")
    p.add_argument("--max-body-mb", type=float, help="largest accepted JSON request body in MB (default 8)")
    p.add_argument("--manager-interval", type=float, help="seconds between HPO manager passes (default 1)")
    p.add_argument("--steering-workers", type=int, help="threads running optimizers (default 4)")
    p.add_argument("--mlflow-uri", help="MLflow tracking server URI: every point becomes a run "
                                        "(default $PHPO_MLFLOW_URI; unset: no MLflow)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default info")
    sub = p.add_subparsers(dest="command")
    t = sub.add_parser("create-token", help="create a bearer token and print it (only the token) on stdout")
    t.add_argument("--name", required=True)
    t.add_argument("--role", choices=[r.value for r in Role], default="user")
    # SUPPRESS: `phpo server --data-dir D create-token ...` keeps D (argparse would reset it)
    _db_options(t, default=argparse.SUPPRESS)
    return p


def _settings(args: argparse.Namespace) -> Any:
    from .settings import Settings

    names = ["host", "port", "data_dir", "database_url", "lease_seconds", "reaper_interval", "artifact_url",
             "max_upload_mb", "max_body_mb", "manager_interval", "steering_workers", "log_level", "mlflow_uri"]
    given = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    if "data_dir" not in given and given.get("database_url", "").startswith("sqlite:///") and not given.get(
            "artifact_url"):
        # a SQLite file named on the command line keeps its artifacts beside it
        from pathlib import Path

        given["data_dir"] = str(Path(given["database_url"][len("sqlite:///"):]).expanduser().parent)
    return Settings(**given)


def create_token_cmd(args: argparse.Namespace) -> int:
    from .db.engine import Database
    from .repositories.tokens import create_token

    settings = _settings(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.effective_database_url)
    try:
        db.migrate()
        with db.write() as s:
            token = create_token(s, args.name, args.role)
    finally:
        db.dispose()
    sys.stdout.write(token + "\n")
    return 0


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app

    settings = _settings(args)
    import faulthandler
    import signal

    # `kill -USR1 <pid>` prints every thread's stack to the log: how to see where a server waits
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                access_log=settings.log_level.lower() == "debug")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "create-token":
        return create_token_cmd(args)
    return serve(args)
