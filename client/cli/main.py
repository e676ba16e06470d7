"""The ``phpo`` command.

``phpo --loadJson conf.json --outDS name ...`` (no command) submits a task exactly like upstream
PanDA ``phpo``; ``phpo submit ...`` is the same. The other commands follow one pattern:
``phpo COMMAND [ID] [--json]``. ``phpo server`` / ``phpo agent`` hand the rest of the command
line to the server's and the agent's own CLIs, imported only when asked for, so a client-only
install stays light.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from .. import Client
from ..errors import PhpoError
from . import commands, pictures
from .upstream import CliError, add_submit_options

COMMANDS: dict[str, str] = {
    "submit": "submit a task (the default when no command is given)",
    "list": "your tasks",
    "show": "one task: state, counts, best point, points",
    "segments": "the per-segment summary of a segmented task (--sort, --limit/--offset, --csv)",
    "best": "the best point (--segments: of each segment)",
    "points": "every point of a task as a table, CSV (--csv) or JSON (--json)",
    "kill": "cancel a task",
    "pause": "pause a task (running points finish and count, no new ones start)",
    "resume": "resume a paused task",
    "logs": "the evaluation logs of a task (--point N: of one point)",
    "wait": "follow a task live until it ends; exit 0 when it finished with evaluated points",
    "run-local": "run the payload once here, on a sample point, as an agent would (before submitting)",
    "workflow": "DAG workflows: submit, show, list, cancel, wait (phpo workflow --help)",
    "plot": "a plot of a task (history, parallel, importance, intermediate, pareto, segments) as .html or .png",
    "ui": "the link to the web view of your tasks and workflows (it logs in with your token)",
    "dashboard": "the MLflow runs table of a task, best points first (--open: open it, --json: as an object)",
    "up": "run the embedded stack (server on SQLite + one local agent + MLflow + phpo serve) until Ctrl-C (--detach)",
    "down": "stop the embedded stack `phpo up --detach` (or another shell's phpo up) started",
    "demo": "run a real HPO on the embedded stack and show the result",
    "server": "the phpo server (phpo server --help)",
    "agent": "an evaluation agent (phpo agent --help)",
    "data": "HEP data streaming: specs, read, train (MLaaS4HEP's reader and workflow; phpo data --help)",
    "serve": "serve registered models over HTTP (phpo serve --help)",
}
PASSTHROUGH = {
    "server": ("phpo.server.cli", "server"),
    "agent": ("phpo.evaluation_container.cli", "agent"),
    "data": ("phpo.data.cli", "data"),
    "serve": ("phpo.serving.cli", "serving"),
}

EPILOG = (
    "commands:\n"
    + "\n".join(f"  {k:<9} {v}" for k, v in COMMANDS.items())
    + (
        "\n\nphpo COMMAND --help describes each. Server and token come from --url/--token, else "
        "PHPO_URL/PHPO_TOKEN, else the config file `phpo up` writes ($XDG_CONFIG_HOME/phpo/config.toml).\n\n"
        + commands.EXIT_CODES_HELP
    )
)


def _connection(p: argparse.ArgumentParser, json_help: str = "print JSON instead of a table") -> None:
    g = p.add_argument_group("connection and output")
    g.add_argument("--url", help="phpo server URL (default: PHPO_URL or the config file)")
    g.add_argument("--token", help="your token (default: PHPO_TOKEN or the config file)")
    g.add_argument("--json", action="store_true", help=json_help)


def submit_parser(prog: str = "phpo") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        usage=f"{prog} [submit] [--loadJson FILE] [--OPTION VALUE ...]  |  phpo COMMAND ...",
        description="Submit an HPO task (upstream PanDA phpo options). The sandbox, the *.json *.py *.sh "
        "*.yaml files of the current directory, is uploaded with it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_submit_options(p)
    _connection(p, "print the new task as JSON")
    p.add_argument("--version", action="version", version=_version())
    return p


def command_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="phpo", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def cmd(name: str, **kw) -> argparse.ArgumentParser:
        kw.setdefault("description", COMMANDS[name])
        return sub.add_parser(name, help=COMMANDS[name], **kw)

    s = cmd("submit", usage="phpo submit [--loadJson FILE] [--OPTION VALUE ...]")
    add_submit_options(s)
    _connection(s, "print the new task as JSON")

    s = cmd("list")
    s.add_argument("--state", help="only tasks in this state (running, finished, ...)")
    s.add_argument("--name", help="only tasks with this name (outDS)")
    s.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    _connection(s)

    s = cmd("show")
    s.add_argument("id", type=int)
    s.add_argument(
        "--points",
        type=int,
        default=20,
        metavar="N",
        help='list N points, best first (default 20; 0: none); with --json they go under "points"',
    )
    s.add_argument("--offset", type=int, default=0, metavar="N", help="skip the N best points (paging)")
    _connection(s, 'print the task as JSON, with one page of points ("points", "points_page")')

    s = cmd(
        "points",
        description="Every point of a task (all pages): state, loss, attempts, site, parameters and the "
        "payload's metrics. --csv and --json export them.",
    )
    s.add_argument("id", type=int)
    s.add_argument(
        "--state", help="only points in this state (ready, leased, evaluated, failed, cancelled, pruned)"
    )
    s.add_argument("--segment", help="only the points of this segment (its id or name)")
    s.add_argument(
        "--sort",
        metavar="KEY",
        help="id (default), serial, loss, created_at or evaluated_at; "
        "-KEY descending; points without a loss last",
    )
    s.add_argument("--csv", action="store_true", help="print CSV (one column per parameter and per metric)")
    _connection(s, "print a list of points as JSON")

    s = cmd(
        "segments",
        description="One row per segment of a segmented task: points evaluated, running, failed, the "
        "best loss and the best point's parameters, whether the segment is finished. All segments "
        "unless --limit/--offset pick a slice of the chosen order.",
    )
    s.add_argument("id", type=int)
    s.add_argument(
        "--sort",
        metavar="KEY",
        help="id (default), name, best_loss, evaluated, failed, running, ready, jobs or finished; "
        "-KEY for descending (e.g. --sort=-evaluated). Segments with no best loss yet come last",
    )
    s.add_argument("--limit", type=int, default=None, metavar="N", help="at most N segments (default all)")
    s.add_argument("--offset", type=int, default=0, metavar="N", help="skip the first N (default 0)")
    s.add_argument(
        "--csv", action="store_true", help="print CSV (the counts, best_loss, one column per parameter)"
    )
    _connection(s, "print a list of segments as JSON")

    s = cmd("best")
    s.add_argument("id", type=int)
    s.add_argument("--segments", action="store_true", help="the best point of each segment")
    s.add_argument("--csv", action="store_true", help="print CSV (point, loss, one column per parameter)")
    s.add_argument(
        "--model",
        action="store_true",
        help="where the best point's model is in MLflow's model registry (name, version, models:/ URI; "
        "each segment's with --segments); exit 4 while it is not registered yet",
    )
    _connection(s, 'print {"loss": ..., "params": {...}} (with --segments a list, each with its segment)')

    for name in ("kill", "pause", "resume"):
        s = cmd(name)
        s.add_argument("id", type=int)
        _connection(s, "print the task as JSON")

    s = cmd("logs")
    s.add_argument("id", type=int)
    s.add_argument("--point", type=int, metavar="N", help="only the logs of point N (its id)")
    _connection(s, "print a list of {artifact, text}")

    s = cmd("wait")
    s.add_argument("id", type=int)
    s.add_argument("--timeout", type=float, metavar="SECONDS", help="give up after this long (exit 3)")
    s.add_argument(
        "--poll", type=float, default=1.0, metavar="SECONDS", help="seconds between checks (default 1)"
    )
    s.add_argument("--quiet", action="store_true", help="no live progress")
    _connection(s, "print the final task as JSON")

    s = cmd(
        "run-local",
        usage="phpo run-local [--loadJson FILE] [--OPTION VALUE ...] [--point JSON]",
        description="Run evaluationExec once in a directory laid out like an agent's job directory (the "
        "sandbox phpo submit would ship, the point in input.json, the training file list, the PHPO_* "
        "variables) and read output.json with the agent's rules: a missing file, a crash or a bad "
        "output shows in seconds. Takes the options of phpo submit. Exit 0 when the point would be "
        "evaluated, 1 when it would fail.",
    )
    add_submit_options(s)
    g = s.add_argument_group("run-local")
    g.add_argument(
        "--point", metavar="JSON", help="the point to run (default: the middle of the search space)"
    )
    g.add_argument(
        "--segment", metavar="NAME", help="segmented HPO: run as this segment (default: the first)"
    )
    g.add_argument("--workdir", metavar="DIR", help="use this (new or empty) directory; it is kept")
    g.add_argument("--keep", action="store_true", help="keep the job directory also when the point works")
    g.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="stop the payload after this long (default evaluationTimeout)",
    )
    g.add_argument("--quiet", action="store_true", help="do not show the payload's output as it runs")
    g.add_argument("--json", action="store_true", help="print the outcome as JSON on stdout")

    s = cmd(
        "up",
        description="Run the embedded stack in the foreground until Ctrl-C, SIGTERM, SIGHUP or `phpo down` "
        "(with --detach: in the background): a server on SQLite, one local agent, MLflow and phpo serve. Its "
        "children end with it, also when it is killed. It writes the URL and a user token to the "
        "client config so that `phpo ...` in another shell just works.",
    )
    s.add_argument(
        "--data-dir",
        help="where the database, artifacts and agent work dirs live "
        "(default $XDG_DATA_HOME/phpo, i.e. ~/.local/share/phpo)",
    )
    s.add_argument("--port", type=int, default=None, help="server port on 127.0.0.1 (default 8765)")
    s.add_argument("--slots", type=int, default=None, help="jobs the local agent runs at a time (default 2)")
    s.add_argument("--no-config", action="store_true", help="do not write the client config file")
    s.add_argument("--no-mlflow", action="store_true", help="do not start an MLflow tracking server")
    s.add_argument(
        "--mlflow-port",
        type=int,
        default=None,
        help="MLflow's port (default: the one this data directory had last time, else a free one)",
    )
    s.add_argument(
        "--no-serve",
        action="store_true",
        help="do not start phpo serve (the inference service for registered models; needs MLflow)",
    )
    s.add_argument(
        "--serve-port",
        type=int,
        default=None,
        help="phpo serve's port on 127.0.0.1 (default: a free one; phpo up prints it)",
    )
    s.add_argument(
        "--detach",
        action="store_true",
        help="run in the background (output in DATA_DIR/logs/up.log) until `phpo down`",
    )

    s = cmd(
        "down",
        description="Stop the `phpo up` that runs for a data directory (started with --detach, or in "
        "another shell): the agent first, then the server and MLflow, as Ctrl-C does.",
    )
    s.add_argument("--data-dir", help="the data directory of that phpo up (default $XDG_DATA_HOME/phpo)")
    s.add_argument(
        "--timeout",
        type=float,
        default=90.0,
        metavar="SECONDS",
        help="give up waiting after this long (exit 3; default 90)",
    )

    s = cmd(
        "plot",
        description="Draw a plot of a task from the server's data (plotly, Optuna's figures): history (loss "
        "of each point and the best so far), parallel (parallel coordinates), importance (fANOVA "
        "parameter importance), intermediate (learning curves), pareto (multi-objective), segments "
        "(best loss per segment). --out FILE.html is interactive and works offline; .png/.svg/.pdf "
        "need kaleido (phpo[plots]).",
    )
    s.add_argument("id", type=int)
    s.add_argument(
        "kind", choices=["history", "parallel", "importance", "intermediate", "pareto", "segments"]
    )
    s.add_argument("--out", metavar="FILE", help="where to write it (default taskID-KIND.html)")
    s.add_argument("--segment", help="a segmented task's segment to draw (its id or name; default the first)")
    _connection(s, "print the plotly figure as JSON instead of writing a file")

    s = cmd(
        "ui",
        description="Print the address of the web view (/ui/) with your token in it: opening it "
        "logs you in, and the page then drops the token from the address bar.",
    )
    s.add_argument("--open", action="store_true", help="open it in a browser")
    _connection(s)

    s = cmd("dashboard")
    s.add_argument("id", type=int)
    s.add_argument(
        "--mlflow-uri",
        help="MLflow tracking server (default PHPO_MLFLOW_URI, MLFLOW_TRACKING_URI "
        "or the one `phpo up` started)",
    )
    s.add_argument("--open", action="store_true", help="open the URL in a browser")
    _connection(s)

    s = cmd(
        "demo",
        description="Start the embedded stack in a temporary directory, run a real HPO (an MLP on "
        "scikit-learn's handwritten digits, checkpointed every epoch), show live "
        "progress and the best point. Does not touch your client config.",
    )
    s.add_argument(
        "--max-points", type=int, default=None, metavar="N", help="points to evaluate (default 20)"
    )
    s.add_argument(
        "--parallel",
        type=int,
        default=None,
        metavar="N",
        help="points evaluated at the same time (default 2)",
    )
    s.add_argument("--data-dir", help="use this directory instead of a temporary one (kept)")
    s.add_argument("--keep", action="store_true", help="keep the data directory afterwards")
    s.add_argument("--optimizer", default=None, help="built-in optimizer (default optuna.tpe)")
    return p


def _version() -> str:
    try:
        from importlib.metadata import version

        return f"phpo {version('phpo')}"
    except Exception:  # noqa: BLE001
        return "phpo (unknown version)"


def _first_word(argv: Sequence[str]) -> int:
    """Index of the first argument that is not a global --url/--token (or its value)."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--url", "--token"):
            i += 2
        elif a.startswith(("--url=", "--token=")):
            i += 1
        else:
            return i
    return i


def run_passthrough(which: str, rest: list[str]) -> int:
    module, extra = PASSTHROUGH[which]
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        print(
            f"error: `phpo {which}` is not available in this installation ({e}); "
            f"install phpo[{extra}], e.g. pip install 'phpo[{extra}]'",
            file=sys.stderr,
        )
        return 2
    rc = mod.main(rest)
    return int(rc or 0)


HANDLERS: dict[str, Callable] = {
    "submit": commands.cmd_submit,
    "list": commands.cmd_list,
    "show": commands.cmd_show,
    "segments": commands.cmd_segments,
    "best": commands.cmd_best,
    "kill": commands.cmd_action,
    "pause": commands.cmd_action,
    "resume": commands.cmd_action,
    "logs": commands.cmd_logs,
    "points": commands.cmd_points,
    "wait": commands.cmd_wait,
    "plot": pictures.cmd_plot,
    "ui": pictures.cmd_ui,
}


def _glue_sort(argv: list[str]) -> list[str]:
    """``--sort -best_loss`` as ``--sort=-best_loss``: argparse would take the descending key for
    an option and say the value is missing."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        nxt = argv[i + 1] if i + 1 < len(argv) else ""
        if argv[i] == "--sort" and nxt.startswith("-") and nxt[1:2].isalpha():
            out.append(f"--sort={nxt}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    i = _first_word(argv)
    word = argv[i] if i < len(argv) else None
    if word in PASSTHROUGH:
        return run_passthrough(word, argv[i + 1 :])
    if word == "workflow":  # its own parser; global --url/--token move behind the subcommand
        from .workflow import main as workflow_main

        return workflow_main(argv[i + 1 :] + argv[:i])
    try:
        if word in COMMANDS:
            args = command_parser().parse_args(_glue_sort(argv) if word in ("segments", "points") else argv)
        elif word is None and not argv:
            submit_parser().print_help(sys.stderr)
            return commands.EXIT_USAGE
        elif word is not None and not word.startswith("-"):
            close = [c for c in COMMANDS if c.startswith(word[:2])]
            raise CliError(
                f"unknown command '{word}'"
                + (f" (did you mean {' or '.join(close)}?)" if close else "")
                + f"; commands: {', '.join(COMMANDS)}; options without a command submit a task"
            )
        else:
            args = submit_parser().parse_args(argv)
            args.command = "submit"
        if args.command == "up":
            from .stack import cmd_up

            return cmd_up(args)
        if args.command == "run-local":
            # the agent's code runs the payload (the client imports no agent code, see run_passthrough)
            try:
                run_local = importlib.import_module("phpo.evaluation_container.run_local")
            except ImportError as e:
                raise CliError(
                    f"`phpo run-local` runs the payload as the agent would and needs it ({e}); "
                    "install phpo[agent], e.g. pip install 'phpo[agent]'"
                ) from None
            return run_local.cmd_run_local(args)
        if args.command == "down":
            from .stack import cmd_down

            return cmd_down(args)
        if args.command == "dashboard":
            from .stack import cmd_dashboard

            return cmd_dashboard(args, lambda: Client(args.url, args.token))
        if args.command == "demo":
            from .demo import cmd_demo

            return cmd_demo(args)

        def make_client() -> Client:
            return Client(args.url, args.token)

        return HANDLERS[args.command](args, make_client)
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except PhpoError as e:
        print(f"error: {e}", file=sys.stderr)
        # submit: 1 for every failure, as upstream phpo; the other commands tell the causes apart
        return (
            commands.EXIT_FAILED
            if word in (None, "submit") or word.startswith("-")
            else commands.exit_code_for(e)
        )
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return reader_gone()


def reader_gone() -> int:
    """The reader of stdout went away (``phpo logs 7 | head``): no traceback, and no second
    BrokenPipeError when Python flushes stdout at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return commands.EXIT_PIPE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
