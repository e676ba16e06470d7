"""Workflows in the Python client: reading definition files and the ``Client`` methods.

:class:`WorkflowMethods` is mixed into :class:`phpo.client.Client`::

    with Client() as c:
        wf = c.submit_workflow("examples/workflows/hpo_then_train.yaml", params={"max_points": 8})
        wf = c.wait_workflow(wf.id)
        print(wf.state, wf.outputs)

A definition is YAML or JSON (:func:`load_definition`); a ``workflow`` node with ``file:`` has that
file inlined (relative to the file naming it). Submitting a file uploads its folder's
``*.json *.py *.sh *.yaml`` as the workflow's sandbox, so every node's command finds its scripts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from phpo.schemas.workflows import Workflow, WorkflowNodeRecord, WorkflowSubmit
from pydantic import ValidationError

from .errors import InvalidInput
from .progress import format_loss
from .tables import Table

TERMINAL_WORKFLOW_STATES = frozenset({"succeeded", "failed", "cancelled"})


class DefinitionFileError(InvalidInput):
    """A definition file that cannot be read or parsed (before anything is sent)."""


def _bad(message: str, field: str | None = None) -> DefinitionFileError:
    return DefinitionFileError(0, "invalid_definition", message, field)


def load_definition(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML or JSON definition; inline the ``file:`` of workflow nodes."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise _bad(f"cannot read the workflow definition {path}: {e.strerror or e}", "file") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise _bad(
            f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}", "file"
        ) from None
    if not isinstance(data, dict):
        raise _bad(f"{path}: a workflow definition is a mapping with name, params and nodes", "file")
    _inline(data, path.resolve().parent, (*_seen, path.resolve()))
    return data


def _inline(definition: dict[str, Any], base: Path, seen: tuple[Path, ...]) -> None:
    for node in definition.get("nodes") or []:
        if not isinstance(node, dict):
            continue
        if node.get("kind") == "loop":
            _inline(node, base, seen)
        elif node.get("kind") == "workflow" and node.get("file") and node.get("workflow") is None:
            target = (base / str(node["file"])).resolve()
            if target in seen:
                raise _bad(f"node '{node.get('name')}': {node['file']} includes itself", "file")
            node["workflow"] = load_definition(target, seen)
            node.pop("file")


def parse_param(text: str) -> tuple[str, Any]:
    """``k=v`` from the command line; ``v`` is read as YAML (``3``, ``0.5``, ``[1, 2]``, ``true``),
    and stays a string when it is not valid YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise _bad(f"--param takes KEY=VALUE, got {text!r}", "param")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def walk(nodes: list[WorkflowNodeRecord]) -> Iterator[WorkflowNodeRecord]:
    """Every node record of a tree, depth first."""
    for n in nodes:
        yield n
        yield from walk(n.children)


def summary_line(wf: Workflow) -> str:
    c = wf.counts
    parts = [
        f"{c[k]} {k}"
        for k in ("done", "running", "waiting", "ready", "failed", "skipped", "cancelled")
        if c.get(k)
    ]
    return f"workflow {wf.id} {wf.name} {wf.state.value}: " + (", ".join(parts) or "no nodes yet")


def node_line(n: WorkflowNodeRecord) -> str:
    """One line about a node: state, task, best loss or outputs, or why it failed/skipped."""
    bits = [n.state.value]
    if n.task_id is not None:
        bits.append(f"task {n.task_id}")
    if n.workflow_id is not None:
        bits.append(f"workflow {n.workflow_id}")
    if n.progress is not None and n.state.value == "running":
        bits.append(f"{n.progress.evaluated}/{n.progress.total} evaluated")
    r = n.results or {}
    if isinstance(r.get("best"), dict):
        bits.append(
            f"best loss {format_loss(r['best'].get('loss'))} at {json.dumps(r['best'].get('params'))}"
        )
    if isinstance(r.get("outputs"), dict) and r["outputs"]:
        bits.append("outputs " + json.dumps(r["outputs"], default=str))
    if n.kind == "loop" and n.iteration:
        bits.append(f"{n.iteration} iteration{'s' if n.iteration > 1 else ''}")
    if n.message and n.state.value in ("failed", "skipped", "cancelled", "done") and not r.get("outputs"):
        bits.append(n.message)
    return " · ".join(bits)


class WorkflowMethods:
    """The workflow half of :class:`phpo.client.Client` (it provides ``request`` and
    ``upload_sandbox``)."""

    def submit_workflow(
        self,
        definition: dict[str, Any] | str | Path,
        params: dict[str, Any] | None = None,
        *,
        sandbox: bool | str | Path = True,
    ) -> Workflow:
        """Submit a workflow from a file (YAML/JSON) or a definition dict.

        ``sandbox``: ``True`` uploads the definition file's folder (nothing for a dict), a path
        uploads that folder, ``False`` uploads nothing. A ``sandbox`` already set in the
        definition is kept. The server checks the definition node by node; a mistake raises
        :class:`~phpo.client.InvalidInput` whose message names the node."""
        folder: Path | None = None
        if isinstance(definition, (str, Path)):
            path = Path(definition)
            data = load_definition(path)
            folder = path.resolve().parent
        elif isinstance(definition, dict):
            data = json.loads(json.dumps(definition))  # a copy, JSON-clean
        else:
            raise TypeError(f"definition must be a file path or a dict, not {type(definition).__name__}")
        if isinstance(sandbox, (str, Path)) and not isinstance(sandbox, bool):
            folder = Path(sandbox)
        if sandbox is not False and folder is not None and not data.get("sandbox"):
            sid = self.upload_sandbox(folder)  # type: ignore[attr-defined]
            if sid is not None:
                data["sandbox"] = sid
        try:
            body = WorkflowSubmit(definition=data, params=dict(params or {}))
        except ValidationError as e:
            raise _bad(str(e)) from None
        r = self.request("POST", "/workflows", json=body.model_dump(mode="json"))  # type: ignore[attr-defined]
        return Workflow.model_validate(r.json())

    def workflow(self, workflow_id: int) -> Workflow:
        """A workflow with its node tree (states, iterations, task ids, results)."""
        return Workflow.model_validate(self.request("GET", f"/workflows/{int(workflow_id)}").json())  # type: ignore[attr-defined]

    def workflows(
        self, state: str | None = None, name: str | None = None, limit: int = 100, offset: int = 0
    ) -> Table[Workflow]:
        """Your workflows, newest first (sub-workflows appear inside their parent)."""
        params = {
            k: v
            for k, v in {"state": state, "name": name, "limit": limit, "offset": offset}.items()
            if v is not None
        }
        page = self.request("GET", "/workflows", params=params).json()  # type: ignore[attr-defined]
        return Table(Workflow.model_validate(x) for x in page["items"])

    def cancel_workflow(self, workflow_id: int) -> Workflow:
        """Cancel the workflow and every running node's task (and sub-workflow)."""
        r = self.request("POST", f"/workflows/{int(workflow_id)}/cancel")  # type: ignore[attr-defined]
        return Workflow.model_validate(r.json())

    def wait_workflow(
        self,
        workflow_id: int,
        progress: bool = True,
        poll: float = 1.0,
        timeout: float | None = None,
        console: Any = None,
    ) -> Workflow:
        """Block until the workflow has succeeded, failed or been cancelled; return it.

        With ``progress``, print a line whenever a node changes state (to stderr, or ``console``).
        Raises :class:`TimeoutError` after ``timeout`` seconds (the workflow goes on)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: dict[str, str] = {}
        con = console
        if progress and con is None:
            from rich.console import Console

            con = Console(stderr=True, highlight=False, soft_wrap=True)
        while True:
            wf = self.workflow(workflow_id)
            if progress and con is not None:
                for n in walk(wf.nodes):
                    line = node_line(n)
                    if seen.get(n.path) != line:
                        seen[n.path] = line
                        con.print(f"  {n.path}: {line}")
            if wf.state.value in TERMINAL_WORKFLOW_STATES:
                if progress and con is not None:
                    con.print(summary_line(wf) + (f" — {wf.message}" if wf.message else ""))
                return wf
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"workflow {workflow_id} is still {wf.state.value} after {timeout:g} s "
                    f"({summary_line(wf)})"
                )
            time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))
