"""``phpo workflow``: submit, show, list, cancel and wait for DAG workflows.

``phpo workflow submit FILE [--param k=v ...]`` uploads the definition file's folder as the
sandbox and submits; ``show`` draws the node tree (loop iterations and fan-out instances as
branches); ``wait`` prints each node's changes and exits 0 only when the workflow succeeded.
Every command takes ``--json`` for scripts (nothing else on stdout).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from phpo.schemas.workflows import Workflow, WorkflowNodeRecord
from rich.markup import escape
from rich.table import Table as RichTable
from rich.tree import Tree

from .. import Client
from ..errors import PhpoError
from ..workflows import node_line, parse_param
from .commands import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    err_console,
    exit_code_for,
    out_console,
    print_json,
)
from .upstream import CliError

COMMANDS = {
    "submit": "submit a workflow definition (YAML or JSON)",
    "show": "one workflow: its node tree with states, iterations, tasks and results",
    "list": "your workflows",
    "cancel": "cancel a workflow and every running node's task",
    "wait": "follow a workflow until it ends; exit 0 when it succeeded",
}

STATE_STYLE = {
    "done": "green",
    "succeeded": "green",
    "running": "cyan",
    "waiting": "dim",
    "ready": "dim",
    "failed": "red",
    "cancelled": "yellow",
    "skipped": "yellow",
}


def _connection(p: argparse.ArgumentParser, json_help: str) -> None:
    g = p.add_argument_group("connection and output")
    g.add_argument("--url", help="phpo server URL (default: PHPO_URL or the config file)")
    g.add_argument("--token", help="your token (default: PHPO_TOKEN or the config file)")
    g.add_argument("--json", action="store_true", help=json_help)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="phpo workflow", description="DAG workflows: " + ", ".join(COMMANDS))
    sub = p.add_subparsers(dest="action", metavar="COMMAND", required=True)

    s = sub.add_parser(
        "submit",
        help=COMMANDS["submit"],
        description=COMMANDS["submit"] + ". The *.json *.py "
        "*.sh *.yaml files of the definition's folder are uploaded as the sandbox of every node.",
    )
    s.add_argument("file", help="the definition (YAML, or JSON with a .json suffix)")
    s.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter; VALUE is read as YAML (3, 0.5, [1, 2], true); repeatable",
    )
    s.add_argument("--no-sandbox", action="store_true", help="do not upload the definition's folder")
    s.add_argument("--wait", action="store_true", help="then follow it, as `phpo workflow wait`")
    _connection(s, "print the new workflow as JSON")

    s = sub.add_parser("show", help=COMMANDS["show"], description=COMMANDS["show"])
    s.add_argument("id", type=int)
    _connection(s, "print the workflow (with its node tree) as JSON")

    s = sub.add_parser("list", help=COMMANDS["list"], description=COMMANDS["list"])
    s.add_argument("--state", help="only workflows in this state (running, succeeded, failed, cancelled)")
    s.add_argument("--name", help="only workflows with this name")
    s.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    _connection(s, "print a JSON list")

    s = sub.add_parser("cancel", help=COMMANDS["cancel"], description=COMMANDS["cancel"])
    s.add_argument("id", type=int)
    _connection(s, "print the workflow as JSON")

    s = sub.add_parser("wait", help=COMMANDS["wait"], description=COMMANDS["wait"])
    s.add_argument("id", type=int)
    s.add_argument("--timeout", type=float, metavar="SECONDS", help="give up after this long (exit 3)")
    s.add_argument(
        "--poll", type=float, default=1.0, metavar="SECONDS", help="seconds between checks (default 1)"
    )
    s.add_argument("--quiet", action="store_true", help="no progress lines")
    _connection(s, "print the final workflow as JSON")
    return p


# --- rendering ---------------------------------------------------------------------------


def _state(state: str) -> str:
    return f"[{STATE_STYLE.get(state, 'white')}]{state}[/]"


def _label(n: WorkflowNodeRecord, name: str | None = None) -> str:
    line = node_line(n)
    state, _, rest = line.partition(" · ")
    return f"[bold]{escape(name or n.name)}[/] {_state(state)}" + (f" · {escape(rest)}" if rest else "")


def _add(tree: Tree, n: WorkflowNodeRecord) -> None:
    branch = tree.add(_label(n) + (" [dim](for_each)[/]" if n.fan_out else ""))
    if n.kind == "loop":
        iterations: dict[int, list[WorkflowNodeRecord]] = {}
        for c in n.children:
            iterations.setdefault(c.iteration or 0, []).append(c)
        for k in sorted(iterations):
            it = branch.add(f"[bold]iteration {k}[/]")
            for c in iterations[k]:
                _add(it, c)
    elif n.fan_out:
        for c in n.children:
            item = json.dumps(c.item, default=str)
            inst = branch.add(_label(c, f"[{c.item_index}] item={item}"))
            for g in c.children:
                _add(inst, g)
    else:
        for c in n.children:
            _add(branch, c)


def workflow_tree(wf: Workflow) -> Tree:
    head = f"[bold]workflow {wf.id}[/] {escape(wf.name)} {_state(wf.state.value)}"
    if wf.message:
        head += f" · {escape(wf.message)}"
    tree = Tree(head)
    for n in wf.nodes:
        _add(tree, n)
    return tree


def _workflows_table(items: list[Workflow]) -> RichTable:
    t = RichTable(header_style="bold")
    for col in ("id", "name", "state", "nodes", "created", "message"):
        t.add_column(col, justify="right" if col == "id" else "left")
    for wf in items:
        nodes = ", ".join(f"{v} {k}" for k, v in sorted(wf.counts.items()))
        t.add_row(
            str(wf.id),
            escape(wf.name),
            _state(wf.state.value),
            nodes,
            wf.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            escape((wf.message or "")[:80]),
        )
    return t


def _print_outputs(wf: Workflow) -> None:
    if wf.outputs:
        out_console().print("outputs: " + escape(json.dumps(wf.outputs, default=str)))


# --- commands ----------------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace, client: Client) -> int:
    params: dict[str, Any] = {}
    for text in args.param:
        k, v = parse_param(text)
        params[k] = v
    wf = client.submit_workflow(args.file, params, sandbox=not args.no_sandbox)
    if args.wait:
        return _wait(client, wf.id, args, timeout=None, poll=1.0, quiet=False)
    if args.json:
        print_json(wf.model_dump(mode="json"))
    else:
        out_console().print(f"submitted workflow {wf.id} '{escape(wf.name)}'")
        err_console().print(
            f"follow it with: phpo workflow wait {wf.id}   (or phpo workflow show {wf.id})", style="dim"
        )
    return EXIT_OK


def cmd_show(args: argparse.Namespace, client: Client) -> int:
    wf = client.workflow(args.id)
    if args.json:
        print_json(wf.model_dump(mode="json"))
        return EXIT_OK
    out_console().print(workflow_tree(wf))
    _print_outputs(wf)
    return EXIT_OK


def cmd_list(args: argparse.Namespace, client: Client) -> int:
    items = list(client.workflows(state=args.state, name=args.name, limit=args.limit))
    if args.json:
        print_json([w.model_dump(mode="json", exclude={"nodes", "definition"}) for w in items])
        return EXIT_OK
    if not items:
        err_console().print("no workflows" + (f" in state {args.state}" if args.state else ""))
        return EXIT_OK
    out_console().print(_workflows_table(items))
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace, client: Client) -> int:
    wf = client.cancel_workflow(args.id)
    if args.json:
        print_json(wf.model_dump(mode="json"))
    else:
        out_console().print(f"workflow {wf.id} {wf.state.value}")
    return EXIT_OK


def _wait(
    client: Client, wid: int, args: argparse.Namespace, *, timeout: float | None, poll: float, quiet: bool
) -> int:
    try:
        wf = client.wait_workflow(wid, progress=not quiet, poll=poll, timeout=timeout, console=err_console())
    except TimeoutError as e:
        err_console().print(f"[yellow]{escape(str(e))}[/]")
        return EXIT_TIMEOUT
    if args.json:
        print_json(wf.model_dump(mode="json"))
    else:
        out_console().print(workflow_tree(wf))
        _print_outputs(wf)
    return EXIT_OK if wf.state.value == "succeeded" else EXIT_FAILED


def cmd_wait(args: argparse.Namespace, client: Client) -> int:
    return _wait(client, args.id, args, timeout=args.timeout, poll=args.poll, quiet=args.quiet)


HANDLERS = {"submit": cmd_submit, "show": cmd_show, "list": cmd_list, "cancel": cmd_cancel, "wait": cmd_wait}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0) if isinstance(e.code, int) else EXIT_USAGE
    try:
        with Client(args.url, args.token) as client:
            return HANDLERS[args.action](args, client)
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except PhpoError as e:
        print(f"error: {e}", file=sys.stderr)
        return exit_code_for(e)  # as the task commands: 4 not found, 5 no server, 6 refused, ...
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
