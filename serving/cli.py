"""``phpo serve``: start the inference service (uvicorn, ``--workers N``).

``main(argv)`` is what ``phpo serve ...`` and ``python -m phpo.serving`` call.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from .catalog import parse_ref
from .config import ENV_CONFIG, ServeConfig


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="phpo serve",
        description="Serve registered models over HTTP (TFaaS-style): POST feature vectors as JSON to "
        "/v1/models/NAME/VERSION/predict, get predictions. Tokens are phpo tokens, checked at the phpo server "
        "(user: own models, admin: all). Models: --model, --task, --workflow, or added while running "
        "(POST /v1/models, PUT /v1/models/NAME). See docs/serving.md.",
    )
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME:VERSION",
        help="a model of MLflow's registry (repeatable; phpo best ID --model prints it)",
    )
    p.add_argument(
        "--task",
        action="append",
        type=int,
        default=[],
        metavar="ID",
        help="every segment's best model of this task, taken as soon as registered (repeatable)",
    )
    p.add_argument(
        "--workflow",
        action="append",
        type=int,
        default=[],
        metavar="ID",
        help="the models of this workflow's serve nodes, taken as they are done (repeatable)",
    )
    p.add_argument(
        "--mlflow-uri",
        help="MLflow tracking/registry server (default PHPO_MLFLOW_URI, "
        "MLFLOW_TRACKING_URI, or the one `phpo up` wrote to the client config)",
    )
    p.add_argument(
        "--url", help="the phpo server, which checks the tokens (default PHPO_URL or the client config)"
    )
    p.add_argument(
        "--token",
        help="the service's own phpo token, to look up --task/--workflow (default PHPO_TOKEN "
        "or the client config)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8780, help="port (default 8780)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    p.add_argument(
        "--no-batching",
        action="store_true",
        help="every request its own call of the model (default: requests that arrive while the model "
        "is busy go to it together as one batch)",
    )
    p.add_argument(
        "--batch-window-ms",
        type=float,
        default=0.0,
        help="how long a batch waits for more requests before it goes (default 0: it takes what waited "
        "while the model was busy, and goes)",
    )
    p.add_argument(
        "--batch-max-rows",
        type=int,
        default=1024,
        help="a batch goes to the model at once when it holds this many rows (default 1024)",
    )
    p.add_argument(
        "--auth-cache-s",
        type=float,
        default=5.0,
        help="seconds a checked token is trusted before it is checked again (default 5)",
    )
    p.add_argument(
        "--state-dir", help="uploaded models and the shared catalogue (default ~/.local/share/phpo/serve)"
    )
    return p


def _from_client_config(key: str) -> str | None:
    """``url``, ``token`` or ``mlflow_url`` of the client config file (``phpo up`` writes it)."""
    import tomllib

    from phpo.client.config import config_path

    try:
        return tomllib.loads(config_path().read_text()).get(key)
    except (OSError, tomllib.TOMLDecodeError):
        return None


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    for ref in args.model:
        parse_ref(ref)  # a usage error before anything starts
    mlflow_uri = (
        args.mlflow_uri
        or os.environ.get("PHPO_MLFLOW_URI")
        or os.environ.get("MLFLOW_TRACKING_URI")
        or _from_client_config("mlflow_url")
    )
    url = args.url or os.environ.get("PHPO_URL") or _from_client_config("url")
    token = args.token or os.environ.get("PHPO_TOKEN") or _from_client_config("token")
    if not mlflow_uri:
        raise SystemExit("phpo serve: no MLflow server: give --mlflow-uri (or set PHPO_MLFLOW_URI)")
    if not url:
        raise SystemExit("phpo serve: no phpo server to check tokens with: give --url (or set PHPO_URL)")
    state = Path(
        args.state_dir
        or os.environ.get("PHPO_SERVE_STATE_DIR")
        or Path.home() / ".local" / "share" / "phpo" / "serve"
    )
    return ServeConfig(
        models=args.model,
        tasks=args.task,
        workflows=args.workflow,
        mlflow_uri=mlflow_uri,
        phpo_url=url,
        token=token,
        state_dir=state.resolve(),
        batching=not args.no_batching,
        batch_window_ms=args.batch_window_ms,
        batch_max_rows=args.batch_max_rows,
        auth_cache_s=args.auth_cache_s,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        config = config_from_args(args)
    except ValueError as e:
        print(f"phpo serve: {e}", file=sys.stderr)
        return 2
    import uvicorn

    config.state_dir.mkdir(parents=True, exist_ok=True)
    prom = config.state_dir / f"prometheus-{args.port}"
    shutil.rmtree(prom, ignore_errors=True)  # counters start at zero with each start
    prom.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(prom)
    os.environ[ENV_CONFIG] = config.to_env()
    os.environ.setdefault("MLFLOW_TRACKING_URI", config.mlflow_uri)
    # torch's intra-op threads: the CPUs shared out between the workers (else each worker starts one
    # thread per CPU and they fight over the cores); OMP_NUM_THREADS set by the caller wins
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, args.workers))))
    uvicorn.run(
        "phpo.serving.app:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=False,
        log_level="info",
    )
    return 0
