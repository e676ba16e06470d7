"""``phpo server``: run the server, bring its database to the newest schema (``migrate``), or
manage tokens (``create-token``, ``list-tokens``, ``revoke-token``) straight in its database.

``main(argv)`` is what ``python -m phpo.server`` and the ``phpo server ...`` subcommand call.
Command-line options override ``PHPO_*`` environment variables (pydantic-settings).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from phpo.schemas.api import Role


def _db_options(p: argparse.ArgumentParser, default: object = None) -> None:
    p.add_argument(
        "--data-dir",
        default=default,
        help="directory for the SQLite database and artifacts "
        "(default $PHPO_DATA_DIR or ~/.local/share/phpo)",
    )
    p.add_argument(
        "--database-url",
        default=default,
        help="e.g. postgresql+psycopg://user@host/db (default: SQLite in the data dir)",
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="phpo server", description="Run the phpo server (FastAPI + uvicorn).")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8080)")
    _db_options(p)
    p.add_argument(
        "--lease-seconds",
        type=float,
        help="job lease length; a job without heartbeat for this long is lost (default 60)",
    )
    p.add_argument(
        "--reaper-interval",
        type=float,
        help="seconds between checks for expired leases (default lease/4, at most 5)",
    )
    p.add_argument(
        "--artifact-url", help="directory or fsspec URL for artifacts (default DATA_DIR/artifacts)"
    )
    p.add_argument("--max-upload-mb", type=float, help="largest accepted upload in MB (default 2048)")
    p.add_argument("--max-body-mb", type=float, help="largest accepted JSON request body in MB (default 8)")
    p.add_argument("--manager-interval", type=float, help="seconds between HPO manager passes (default 1)")
    p.add_argument("--steering-workers", type=int, help="threads running optimizers (default 4)")
    p.add_argument(
        "--max-acquire-wait",
        type=float,
        help="longest long poll of an agent's acquire in seconds (default and at most 20)",
    )
    p.add_argument(
        "--mlflow-uri",
        help="MLflow tracking server URI: every point becomes a run "
        "(default $PHPO_MLFLOW_URI; unset: no MLflow)",
    )
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default info")
    sub = p.add_subparsers(dest="command")
    t = sub.add_parser("create-token", help="create a bearer token and print it (only the token) on stdout")
    t.add_argument("--name", required=True)
    t.add_argument("--role", choices=[r.value for r in Role], default="user")
    t.add_argument(
        "--site",
        metavar="SITE[,SITE...]",
        help="agent tokens: the only sites it may take jobs for (default: any site)",
    )
    t.add_argument(
        "--token-file",
        metavar="FILE",
        help="register the token written in FILE (at least 32 characters, e.g. a mounted Kubernetes "
        "Secret) instead of a new random one; prints nothing, and does nothing when that token "
        "is registered already (fails when it was revoked)",
    )
    # SUPPRESS: `phpo server --data-dir D create-token ...` keeps D (argparse would reset it)
    _db_options(t, default=argparse.SUPPRESS)
    r = sub.add_parser(
        "revoke-token",
        help="revoke tokens by name (all of that name) or by id; refused from "
        "their next request on, by every server on the database",
    )
    r.add_argument("token", metavar="NAME|ID")
    _db_options(r, default=argparse.SUPPRESS)
    m = sub.add_parser(
        "migrate",
        help="run the database migrations (Alembic) to the newest revision and exit; "
        "safe while servers run (a Kubernetes pre-upgrade Job runs it)",
    )
    _db_options(m, default=argparse.SUPPRESS)
    ls = sub.add_parser("list-tokens", help="list tokens: id, name, role, sites, created, revoked")
    _db_options(ls, default=argparse.SUPPRESS)
    return p


def _settings(args: argparse.Namespace) -> Any:
    from .settings import Settings

    names = [
        "host",
        "port",
        "data_dir",
        "database_url",
        "lease_seconds",
        "reaper_interval",
        "artifact_url",
        "max_upload_mb",
        "max_body_mb",
        "manager_interval",
        "steering_workers",
        "log_level",
        "mlflow_uri",
        "max_acquire_wait",
    ]
    given = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    if (
        "data_dir" not in given
        and given.get("database_url", "").startswith("sqlite:///")
        and not given.get("artifact_url")
    ):
        # a SQLite file named on the command line keeps its artifacts beside it
        given["data_dir"] = str(Path(given["database_url"][len("sqlite:///") :]).expanduser().parent)
    return Settings(**given)


def _database(args: argparse.Namespace) -> Any:
    from .db.engine import Database

    settings = _settings(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.effective_database_url)
    db.migrate()
    return db


def migrate_cmd(args: argparse.Namespace) -> int:
    from .db.engine import current_revisions, head_revision

    db = _database(args)  # migrates
    try:
        revs = current_revisions(db.engine)
    finally:
        db.dispose()
    print(
        f"database {db.engine.url.render_as_string(hide_password=True)} at revision "
        f"{', '.join(revs or []) or '(none)'} (newest: {head_revision() or '?'})"
    )
    return 0


def create_token_cmd(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from phpo.schemas.api import TokenCreate
    from phpo.schemas.errors import validation_messages

    from .repositories.tokens import create_token, find_by_value

    given = None
    if args.token_file:
        try:
            given = Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as e:
            print(f"phpo server create-token: --token-file: {e}", file=sys.stderr)
            return 2
        if len(given) < 32 or any(c.isspace() for c in given):
            print(
                "phpo server create-token: --token-file: the token must be at least 32 characters without "
                "spaces",
                file=sys.stderr,
            )
            return 2
    sites = [x.strip() for x in args.site.split(",") if x.strip()] if args.site is not None else None
    try:
        body = TokenCreate(name=args.name, role=args.role, sites=sites)
    except ValidationError as e:
        _loc, msg = validation_messages(e, "token")
        print(f"phpo server create-token: {msg}", file=sys.stderr)
        return 2
    db = _database(args)
    try:
        with db.write() as s:
            existing = find_by_value(s, given) if given else None
            if existing is None:
                token, _row = create_token(s, body.name, body.role, body.sites, token=given)
    finally:
        db.dispose()
    if existing is not None:
        if existing.revoked:
            print(
                f"phpo server create-token: the token in {args.token_file} was revoked (token {existing.id}, "
                f"{existing.name}); write a new one there",
                file=sys.stderr,
            )
            return 1
        print(
            f"token in {args.token_file} is registered already (token {existing.id}, {existing.name}, "
            f"{existing.role})",
            file=sys.stderr,
        )
        return 0
    if not given:
        sys.stdout.write(token + "\n")
    return 0


def revoke_token_cmd(args: argparse.Namespace) -> int:
    from .repositories.tokens import find_tokens, revoke

    db = _database(args)
    try:
        with db.write() as s:
            rows = find_tokens(s, args.token)
            revoke(rows)
            done = [(r.id, r.name, r.role) for r in rows]
    finally:
        db.dispose()
    if not done:
        print(
            f"phpo server revoke-token: no token named or numbered {args.token!r} (list-tokens shows them)",
            file=sys.stderr,
        )
        return 1
    for tid, name, role in done:
        print(f"revoked token {tid} ({name}, {role})")
    return 0


def list_tokens_cmd(args: argparse.Namespace) -> int:
    from .repositories.tokens import list_tokens, token_info

    db = _database(args)
    try:
        with db.read() as s:
            infos = [token_info(r) for r in list_tokens(s)]
    finally:
        db.dispose()
    print(f"{'ID':>5}  {'NAME':<24} {'ROLE':<6} {'SITES':<24} {'CREATED':<20} REVOKED")
    for t in infos:
        print(
            f"{t.id:>5}  {t.name:<24} {t.role.value:<6} {','.join(t.sites or []) or '(any)':<24} "
            f"{t.created_at:%Y-%m-%d %H:%M:%S}  {'yes' if t.revoked else 'no'}"
        )
    return 0


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app

    settings = _settings(args)
    import faulthandler
    import signal

    # `kill -USR1 <pid>` prints every thread's stack to the log: how to see where a server waits
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=settings.log_level.lower() == "debug",
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "create-token":
        return create_token_cmd(args)
    if args.command == "revoke-token":
        return revoke_token_cmd(args)
    if args.command == "migrate":
        return migrate_cmd(args)
    if args.command == "list-tokens":
        return list_tokens_cmd(args)
    return serve(args)
