"""``phpo agent`` (also ``python -m phpo.evaluation_container``): run an evaluation agent."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from phpo.client.config import load_config
from phpo.client.errors import ConfigError
from phpo.schemas.jobs import JobKind

from .agent import Agent, AgentConfig, default_agent_name
from .resources import resolve_gpus
from .runners.base import PayloadUser

EPILOG = """\
Jobs that name a container (evaluationContainer / steeringContainer) run through the Docker
Engine API: --executor docker uses the engine at --docker-url (or DOCKER_HOST, or
/var/run/docker.sock); --executor podman starts a private `podman system service` under
--workdir (or uses --docker-url). With the default --executor subprocess, jobs run as
`bash -c` in their working directory, and container jobs use a Docker engine if one answers.
--executor dask --scheduler tcp://HOST:8786 runs evaluations as tasks on that Dask cluster
(the job directories must be on a filesystem the workers share; steering stays on this agent).

The token: --token-file FILE (mode 600), else PHPO_TOKEN, else the phpo config file; never on
the command line, where every process of the machine can read it. Payloads get neither the token
nor PHPO_TOKEN; the agent makes its /proc files unreadable to processes of its own uid. Running as
root, --payload-user USER runs subprocess payloads as USER, who can read neither the token file
nor anything of the agent's (see the README, "What protects the agent's token").

Stop with SIGTERM or Ctrl-C: no new jobs, running jobs get --grace-seconds to finish, then
their payloads are stopped, a last checkpoint is uploaded and their points are handed back.
Results the server could not take are kept in WORKDIR/outbox and resent until acknowledged.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="phpo agent",
        description="Lease evaluation and steering jobs from a phpo server and run them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--server", help="server URL (default: PHPO_URL, then the phpo config file)")
    p.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="file holding the agent token (default: PHPO_TOKEN, then the phpo config file)",
    )
    p.add_argument("--token", help=argparse.SUPPRESS)  # refused with a message saying why
    p.add_argument(
        "--payload-user",
        metavar="USER[:GROUP]",
        help="run subprocess payloads as this account (the agent must run as root)",
    )
    p.add_argument("--site", required=True, help="site name, matched against the tasks' --site")
    p.add_argument("--slots", type=int, default=1, help="jobs run at the same time (default 1)")
    p.add_argument(
        "--gpus",
        default="auto",
        help="'auto' (NVML), 'none', or indices like 0,1: each running job gets its own "
        "CUDA_VISIBLE_DEVICES (default auto)",
    )
    p.add_argument(
        "--share-gpus",
        action="store_true",
        help="with more slots than GPUs, let jobs share GPUs (default: never share)",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where job directories and the outbox live (default ./phpo-agent)",
    )
    p.add_argument(
        "--executor",
        choices=["subprocess", "docker", "podman", "dask"],
        default="subprocess",
        help="container engine for jobs that name an image, or dask (see below); default subprocess",
    )
    p.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="--executor dask: the Dask scheduler's address (tcp://HOST:8786)",
    )
    p.add_argument(
        "--rendezvous-host",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="this agent's own address for the rendezvous of a point trained by several agents "
        "(nNodesPerPoint > 1; the other agents must reach it); never all interfaces (default 127.0.0.1)",
    )
    p.add_argument("--docker-url", help="Docker-API socket, e.g. unix:///run/podman/podman.sock")
    p.add_argument(
        "--container-network",
        choices=["none", "host"],
        default="none",
        help="network of containers: none (default) or host (the payload reaches the network)",
    )
    kinds = p.add_mutually_exclusive_group()
    kinds.add_argument("--steering-only", action="store_true", help="take only steering jobs")
    kinds.add_argument("--no-steering", action="store_true", help="take only evaluation jobs")
    p.add_argument("--poll-interval", type=float, default=2.0, help="seconds between acquire calls when idle")
    p.add_argument("--name", default=None, help="agent name (default HOSTNAME-PID)")
    p.add_argument("--once", action="store_true", help="run one job, then exit")
    p.add_argument(
        "--grace-seconds",
        type=float,
        default=30.0,
        help="on SIGTERM, how long running jobs may still run (default 30)",
    )
    p.add_argument(
        "--max-checkpoint-mb",
        type=float,
        default=10240.0,
        help="largest checkpoint tarball uploaded, in MB (default 10240)",
    )
    p.add_argument(
        "--max-unpack-mb",
        type=float,
        default=10240.0,
        help="largest sandbox or checkpoint unpacked, all its files together, in MB (default 10240)",
    )
    p.add_argument(
        "--max-unpack-files",
        type=int,
        default=100_000,
        help="most members of a sandbox or checkpoint tarball (default 100000)",
    )
    p.add_argument(
        "--max-log-mb",
        type=float,
        default=10.0,
        help="stdout/stderr kept per run: the last N MB (default 10)",
    )
    p.add_argument(
        "--retry-seconds",
        type=float,
        default=60.0,
        help="how long one call retries network errors before the result goes to the outbox",
    )
    p.add_argument("--outbox-interval", type=float, default=10.0, help="seconds between outbox resends")
    p.add_argument("--keep-workdirs", action="store_true", help="keep job directories after the jobs end")
    p.add_argument(
        "--log-level", default=os.environ.get("PHPO_LOG_LEVEL", "INFO"), help="DEBUG, INFO (default), WARNING"
    )
    return p


def read_token(token_file: Path | None) -> str | None:
    """The token from ``token_file``, else from ``PHPO_TOKEN`` (removed from the environment
    either way, so no child process inherits it). Raises ConfigError naming the file."""
    env_token = os.environ.pop("PHPO_TOKEN", None) or None
    if token_file is None:
        return env_token
    try:
        st = token_file.stat()
        token = token_file.read_text().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the token file {token_file}: {e}") from None
    if not token:
        raise ConfigError(f"the token file {token_file} is empty")
    if st.st_mode & 0o077:
        logging.getLogger("phpo.agent").warning(
            "the token file %s can be read by others (mode %o): chmod 600 %s",
            token_file,
            st.st_mode & 0o777,
            token_file,
        )
    return token


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.token is not None:
        print(
            "phpo agent: --token puts the token on the command line, where every process on this machine "
            "can read it (/proc/PID/cmdline); give --token-file FILE (mode 600) or set PHPO_TOKEN",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s",
        stream=sys.stderr,
    )
    # urllib3/httpx chatter at INFO drowns the agent's own lines
    for noisy in ("httpx", "httpcore", "urllib3", "docker"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from .runners.subprocess import protect_process

    protect_process()  # before anything secret is in memory
    try:
        cfg = load_config(args.server, read_token(args.token_file))
    except ConfigError as e:
        print(f"phpo agent: {e}", file=sys.stderr)
        return 2
    if not cfg.url:
        print("phpo agent: no server given: pass --server URL or set PHPO_URL", file=sys.stderr)
        return 2
    if not cfg.token:
        print(
            "phpo agent: no token given: pass --token-file FILE or set PHPO_TOKEN "
            "(an admin creates one with `phpo server create-token --role agent`)",
            file=sys.stderr,
        )
        return 2
    if args.slots < 1:
        print(f"phpo agent: --slots must be at least 1, got {args.slots}", file=sys.stderr)
        return 2
    try:
        gpus = resolve_gpus(args.gpus)
    except ValueError as e:
        print(f"phpo agent: {e}", file=sys.stderr)
        return 2
    if args.rendezvous_host in ("0.0.0.0", "::", "", "*"):
        print(
            f"phpo agent: --rendezvous-host {args.rendezvous_host!r}: give this agent's own address (the "
            "rendezvous never listens on all interfaces)",
            file=sys.stderr,
        )
        return 2
    from .launchers import free_loopback_port

    try:
        free_loopback_port(args.rendezvous_host)
    except OSError as e:
        print(
            f"phpo agent: --rendezvous-host {args.rendezvous_host!r} is not an address of this machine ({e})",
            file=sys.stderr,
        )
        return 2
    payload_user = None
    if args.payload_user:
        try:
            payload_user = PayloadUser.parse(args.payload_user)
        except ValueError as e:
            print(f"phpo agent: {e}", file=sys.stderr)
            return 2
        if os.geteuid() != 0:
            print(
                f"phpo agent: --payload-user needs the agent to run as root (it runs as uid {os.geteuid()})",
                file=sys.stderr,
            )
            return 2
    kinds = [JobKind.evaluation, JobKind.steering]
    if args.steering_only:
        kinds = [JobKind.steering]
    elif args.no_steering:
        kinds = [JobKind.evaluation]
    config = AgentConfig(
        site=args.site,
        workdir=args.workdir or Path.cwd() / "phpo-agent",
        slots=args.slots,
        name=args.name or default_agent_name(),
        gpus=gpus,
        share_gpus=args.share_gpus,
        executor=args.executor,
        scheduler=args.scheduler,
        rendezvous_host=args.rendezvous_host,
        docker_url=args.docker_url,
        container_network=args.container_network,
        kinds=kinds,
        poll_interval=args.poll_interval,
        once=args.once,
        grace_seconds=args.grace_seconds,
        max_checkpoint_bytes=int(args.max_checkpoint_mb * 2**20),
        max_log_bytes=int(args.max_log_mb * 2**20),
        retry_seconds=args.retry_seconds,
        outbox_interval=args.outbox_interval,
        keep_workdirs=args.keep_workdirs,
        max_unpack_bytes=int(args.max_unpack_mb * 2**20),
        max_unpack_files=args.max_unpack_files,
        payload_user=payload_user,
    )
    from phpo.client.agent_api import AgentAPI

    with AgentAPI(cfg.url, cfg.token, retry_seconds=args.retry_seconds) as api:
        return Agent(config, api).run()


if __name__ == "__main__":
    sys.exit(main())
