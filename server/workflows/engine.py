"""The workflow engine: submits, cancels and advances DAG workflows.

One background thread (a :class:`~phpo.server.services.background.BackgroundLoop`) makes a
pass every ``interval`` seconds (and at once when woken by a submit). The SQL it runs is in
:mod:`phpo.server.repositories.workflows`. A pass looks at every running workflow and, when something can move (a node whose
dependencies ended, a node's task or sub-workflow that ended, a loop iteration or fan-out
that completed), advances it in **one write transaction with the workflow row locked**:

- a waiting node whose dependencies have ended is started, skipped (its ``when`` is false, or
  a dependency was skipped) or failed (a dependency failed), by its ``trigger``;
- starting an ``hpo`` or ``job`` node creates its task (in the same transaction, so a crash
  can never leave a task without its node or start one twice); a ``workflow`` node creates a
  child workflow; a ``loop`` creates its first iteration's rows; a ``for_each`` node one row
  per item;
- a node ends when its task or sub-workflow ends; a loop checks ``while`` after each iteration
  and starts the next one (new rows, so every iteration stays visible) or ends;
- the workflow ends when all its top-level nodes have ended: failed if any failed, otherwise
  succeeded with its ``outputs`` computed.

Nothing lives only in memory: after a restart the next pass continues from the rows. Every
state change goes through :func:`~phpo.server.orchestration.transitions.set_state`.

Node results (what ``nodes.<name>`` reads): ``status`` and ``message`` for every node, plus
- hpo: ``task_id``, ``state`` (the task's), ``best`` (``params``, ``loss``, ``point_id``; for
  multi-objective tasks also ``pareto``), ``segments`` (the best of each segment) and ``counts``;
- job: ``task_id``, ``state``, ``outputs`` (the output JSON's ``metrics`` plus its ``loss``);
- workflow: ``workflow_id``, ``state``, ``outputs`` (the sub-workflow's outputs);
- a for_each node: ``results`` (each instance's results, in item order) and ``items``;
- a loop: ``iterations`` (started), ``results`` (per iteration: body node name -> results),
  ``last`` (the last iteration's), ``stopped`` (``condition`` or ``max_iterations``).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from phpo.schemas.api import Role
from phpo.schemas.states import (
    TERMINAL_NODE_STATES,
    TERMINAL_TASK_STATES,
    TERMINAL_WORKFLOW_STATES,
    task_succeeded,
)
from phpo.schemas.tasks import TaskSpec
from phpo.schemas.workflows import (
    HpoNode,
    JobNode,
    LoopNode,
    ServeNode,
    Workflow,
    WorkflowNode,
    WorkflowSpec,
    WorkflowSubmit,
)
from pydantic import ValidationError
from sqlalchemy.orm import Session

from ..auth.identity import Caller
from ..db.engine import Database, utcnow
from ..db.tables import TaskRow
from ..db.workflow_tables import WorkflowNodeRow, WorkflowRow
from ..errors import ApiError, InvalidInput
from ..orchestration.transitions import set_state
from ..repositories.models import task_models
from ..repositories.points import best_points
from ..repositories.tasks import counts_by_task
from ..repositories.workflows import (
    add_node_row,
    add_workflow_row,
    find_task,
    find_workflow,
    first_point,
    get_workflow_row,
    lock_task,
    node_rows,
    running_workflow_ids,
    workflow_to_schema,
)
from ..services.background import BackgroundLoop
from ..services.resource_requirements import ArchitectureError, parse_architecture
from ..services.tasks import TaskService, check_optimizer, insert_task
from .expressions import ExpressionError, render, truth
from .validation import (
    Analysis,
    DefinitionError,
    _pydantic_messages,
    analyse,
    check_definition,
    check_max_iterations,
    job_task_spec,
    merge_params,
    parse_definition,
)

log = logging.getLogger(__name__)

NODE_TERMINAL = TERMINAL_NODE_STATES
WORKFLOW_TERMINAL = TERMINAL_WORKFLOW_STATES
JOB_FIELDS = ("exec", "container", "input_file", "output_file", "site", "architecture", "sandbox")
MAX_ERRORS = 5  # unexpected errors in a row before a workflow is failed


def task_check(spec: TaskSpec) -> None:
    """What the task service checks beyond the spec's own form, as a ValueError."""
    try:
        parse_architecture(spec.architecture)
    except ArchitectureError as e:
        raise ValueError(f"architecture: {e}") from None
    try:
        check_optimizer(spec)
    except ApiError as e:
        raise ValueError(e.message) from None


def validate_submission(body: WorkflowSubmit) -> tuple[WorkflowSpec, dict[str, Any]]:
    """The parsed definition and its params, or :class:`InvalidInput` naming the node."""
    try:
        spec = parse_definition(body.definition)
        params = merge_params(spec, body.params)
        check_definition(spec, params, task_check)
    except DefinitionError as e:
        raise InvalidInput(e.message, field=e.field) from None
    return spec, params


class TaskWaker(Protocol):
    """What the engine calls once it stored or cancelled tasks (after the commit): the HPO manager
    steers them and waiting agents wake (``build_context``'s ``changed``)."""

    def __call__(self) -> None: ...


class WorkflowEngine(BackgroundLoop):
    """The loop: a pass every ``interval`` seconds, or at once after :meth:`wake` (a submit)."""

    THREAD_NAME = "phpo-workflow-engine"

    def __init__(self, db: Database, *, wake_tasks: TaskWaker, interval: float = 0.5):
        super().__init__()
        self.db = db
        self.wake_tasks = wake_tasks
        self.interval = interval
        self._errors: dict[int, int] = {}  # workflow id -> unexpected errors in a row

    # ------------------------------------------------------------ the loop

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for _ in range(50):  # cascades (a node ending starts the next) settle within one wake-up
                    if not self.run_once() or self._stop.is_set():
                        break
            except Exception:
                log.exception("workflow engine pass failed")
            self._wake.wait(self.interval)
            self._wake.clear()

    # ------------------------------------------------------------ what users ask for

    def submit(self, caller: Caller, body: WorkflowSubmit) -> Workflow:
        spec, params = validate_submission(body)
        with self.db.write() as s:
            if spec.sandbox is not None:
                TaskService._check_sandbox(s, caller, spec.sandbox)
            wf = insert_workflow(s, caller.name, spec, params, parent_node_id=None)
            out = workflow_to_schema(s, wf)
        self.wake()
        return out

    def cancel(self, caller: Caller, workflow_id: int) -> Workflow:
        with self.db.write() as s:
            wf = get_workflow_row(s, workflow_id, caller, lock=True)
            cancel_workflow(s, wf, f"cancelled by {caller.name}")
            out = workflow_to_schema(s, wf)
        self.wake_tasks()
        self.wake()
        return out

    # ------------------------------------------------------------ passes

    def run_once(self) -> bool:
        """One pass over the running workflows; True when anything changed."""
        with self.db.read() as s:
            ids = running_workflow_ids(s)
        changed = False
        for wid in ids:
            try:
                with self.db.read() as s:
                    wf = find_workflow(s, workflow_id=wid)
                    if wf is None or wf.state != "running" or not _Run(s, wf).actionable():
                        continue
                with self.db.write() as s:
                    wf = get_workflow_row(s, wid, lock=True)
                    if wf.state != "running":
                        continue
                    run = _Run(s, wf)
                    changed |= run.step()
                if run.started_tasks:
                    self.wake_tasks()
                self._errors.pop(wid, None)
            except Exception as e:  # one broken workflow must not stop the others
                n = self._errors[wid] = self._errors.get(wid, 0) + 1
                log.exception("workflow %s: engine error %d/%d", wid, n, MAX_ERRORS)
                if n >= MAX_ERRORS:
                    self._fail_broken(wid, e)
        return changed

    def _fail_broken(self, wid: int, e: Exception) -> None:
        try:
            with self.db.write() as s:
                wf = find_workflow(s, workflow_id=wid)
                if wf is not None and wf.state == "running":
                    cancel_workflow(
                        s, wf, f"the workflow engine failed on it: {type(e).__name__}: {e}", target="failed"
                    )
            self._errors.pop(wid, None)
        except Exception:
            log.exception("workflow %s: could not record the engine failure", wid)


# ---------------------------------------------------------------- rows


def insert_workflow(
    s: Session,
    owner: str,
    spec: WorkflowSpec,
    params: dict[str, Any],
    parent_node_id: int | None,
    sandbox: str | None = None,
) -> WorkflowRow:
    """The workflow, running, with its top-level nodes waiting (a sub-workflow inherits ``sandbox``)."""
    definition = spec.model_dump(mode="json", by_alias=True, exclude_unset=True)
    if sandbox is not None and not definition.get("sandbox"):
        definition["sandbox"] = sandbox
    wf = add_workflow_row(
        s, name=spec.name, owner=owner, definition=definition, params=params, parent_node_id=parent_node_id
    )
    for node in spec.nodes:
        add_node_row(s, workflow_id=wf.id, name=node.name, kind=node.kind, path=node.name)
    s.flush()
    return wf


def cancel_workflow(s: Session, wf: WorkflowRow, reason: str, target: str = "cancelled") -> None:
    """End the workflow (``target``: cancelled, or failed) and cancel every unfinished node, their
    tasks and sub-workflows."""
    set_state(wf, target, message=reason)
    for row in node_rows(s, wf.id):
        if row.state in NODE_TERMINAL:
            continue
        if row.task_id is not None and row.kind != "serve":  # a serve node's task is another node's
            task = lock_task(s, task_id=row.task_id)
            if task is not None and task.state not in TERMINAL_TASK_STATES:
                set_state(task, "cancelled", message=f"its workflow {wf.id} was cancelled")
        if row.child_workflow_id is not None:
            child = find_workflow(s, workflow_id=row.child_workflow_id)
            if child is not None and child.state not in WORKFLOW_TERMINAL:
                cancel_workflow(s, child, reason)
        set_state(row, "cancelled", message=reason)


def _failed_message(rows: list[WorkflowNodeRow], what: str = "node") -> str:
    names = ", ".join(f"'{r.path}'" for r in rows[:5]) + (" ..." if len(rows) > 5 else "")
    first = rows[0].message or rows[0].state
    return f"{what}{'s' if len(rows) > 1 else ''} {names} {rows[0].state}: {first}"


class _Run:
    """One workflow during one pass: its rows, its definition's analysis, and the moves."""

    def __init__(self, s: Session, wf: WorkflowRow):
        self.s = s
        self.wf = wf
        self.spec = WorkflowSpec.model_validate(wf.definition)
        self.an: Analysis = analyse(self.spec)
        self.rows: list[WorkflowNodeRow] = node_rows(s, wf.id)
        self.started_tasks = False

    # ------------------------------------------------------------ structure

    def children(self, row: WorkflowNodeRow) -> list[WorkflowNodeRow]:
        return [r for r in self.rows if r.parent_id == row.id]

    def group(self, loop: WorkflowNodeRow | None, iteration: int) -> dict[str, WorkflowNodeRow]:
        """Rows of one group: the top level, or one iteration of a loop (fan-out instances left out)."""
        pid = loop.id if loop is not None else None
        return {
            r.name: r
            for r in self.rows
            if r.parent_id == pid and r.item_index is None and (loop is None or r.iteration == iteration)
        }

    def by_id(self, rid: int | None) -> WorkflowNodeRow | None:
        return next((r for r in self.rows if r.id == rid), None) if rid is not None else None

    def chain(self, row: WorkflowNodeRow) -> list[tuple[WorkflowNodeRow, int]]:
        """The loops (row, iteration) enclosing ``row``, outermost first."""
        out: list[tuple[WorkflowNodeRow, int]] = []
        r = row
        if r.item_index is not None:
            r = self.by_id(r.parent_id) or r
        while r.parent_id is not None:
            parent = self.by_id(r.parent_id)
            if parent is None:
                break
            out.insert(0, (parent, r.iteration))
            r = parent
        return out

    def group_of(self, row: WorkflowNodeRow) -> dict[str, WorkflowNodeRow]:
        ch = self.chain(row)
        return self.group(ch[-1][0], ch[-1][1]) if ch else self.group(None, 0)

    # ------------------------------------------------------------ what expressions see

    def results(self, row: WorkflowNodeRow) -> dict[str, Any]:
        base = {"status": row.state, "message": row.message}
        if row.fan_out:
            inst = sorted(self.children(row), key=lambda r: r.item_index or 0)
            return {**base, "results": [self.results(r) for r in inst], "items": [r.item for r in inst]}
        if row.kind == "loop":
            its = [self.iteration_results(row, k) for k in range(1, row.iteration + 1)]
            return {
                **base,
                **(row.results or {}),
                "iterations": row.iteration,
                "results": its,
                "last": its[-1] if its else None,
            }
        return {**base, **(row.results or {})}

    def iteration_results(self, loop: WorkflowNodeRow, k: int) -> dict[str, Any]:
        return {name: self.results(r) for name, r in self.group(loop, k).items()}

    def names(
        self, chain: list[tuple[WorkflowNodeRow, int]], item_row: WorkflowNodeRow | None = None
    ) -> dict[str, Any]:
        nodes = {name: self.results(r) for name, r in self.group(None, 0).items()}
        for loop, k in chain:
            nodes.update(self.iteration_results(loop, k))
        out: dict[str, Any] = {
            "params": self.wf.params or {},
            "nodes": nodes,
            "workflow": {"id": self.wf.id, "name": self.wf.name},
        }
        if chain:
            loop, k = chain[-1]
            earlier = [self.iteration_results(loop, j) for j in range(1, k)]
            out["loop"] = {
                "name": loop.name,
                "iteration": k,
                "previous": earlier[-1] if earlier else None,
                "results": earlier,
            }
        if item_row is not None:
            out["item"] = item_row.item
        return out

    # ------------------------------------------------------------ read-only: is there work?

    def actionable(self) -> bool:
        top = list(self.group(None, 0).values())
        if not top or all(r.state in NODE_TERMINAL for r in top):
            return True
        for r in self.rows:
            if r.state in ("waiting", "ready"):
                return True
            if r.state != "running":
                continue
            if r.task_id is not None:
                task = find_task(self.s, task_id=r.task_id)
                if task is None or task.state in TERMINAL_TASK_STATES:
                    return True
            elif r.child_workflow_id is not None:
                child = find_workflow(self.s, workflow_id=r.child_workflow_id)
                if child is None or child.state in WORKFLOW_TERMINAL:
                    return True
            elif r.kind == "loop":
                if all(x.state in NODE_TERMINAL for x in self.group(r, r.iteration).values()):
                    return True
            elif r.fan_out and all(x.state in NODE_TERMINAL for x in self.children(r)):
                return True
        return False

    # ------------------------------------------------------------ moves

    def step(self) -> bool:
        changed = False
        for row in list(self.rows):
            if row.state == "running" and (row.task_id is not None or row.child_workflow_id is not None):
                changed |= self.poll(row)
        for _ in range(10_000):
            moved = False
            for row in list(self.rows):
                if row.state == "waiting":
                    moved |= self.try_start(row)
                elif row.state == "running" and row.kind == "loop":
                    moved |= self.advance_loop(row)
                elif row.state == "running" and row.fan_out:
                    moved |= self.advance_fan_out(row)
            changed |= moved
            if not moved:
                break
        top = list(self.group(None, 0).values())
        if all(r.state in NODE_TERMINAL for r in top):
            self.finish(top)
            changed = True
        self.s.flush()
        return changed

    def add_row(self, name: str, kind: str, path: str, **kw: Any) -> WorkflowNodeRow:
        row = add_node_row(self.s, workflow_id=self.wf.id, name=name, kind=kind, path=path, **kw)
        self.s.flush()
        self.rows.append(row)
        return row

    def try_start(self, row: WorkflowNodeRow) -> bool:
        node = self.an.nodes[row.name].node
        if row.item_index is None:
            group = self.group_of(row)
            deps = [group[d] for d in sorted(self.an.nodes[row.name].deps) if d in group]
            if any(d.state not in NODE_TERMINAL for d in deps):
                return False
            failed = [d for d in deps if d.state in ("failed", "cancelled")]
            skipped = [d for d in deps if d.state == "skipped"]
            if node.trigger != "all_done":
                if failed:
                    set_state(row, "failed", message=f"dependency '{failed[0].name}' {failed[0].state}")
                    return True
                if skipped and node.trigger == "all_succeeded":
                    set_state(row, "skipped", message=f"dependency '{skipped[0].name}' was skipped")
                    return True
        set_state(row, "ready")
        chain = self.chain(row)
        try:
            names = self.names(chain, row if row.item_index is not None else None)
            if row.item_index is None and getattr(node, "for_each", None) is not None:
                self.fan_out(row, node, names)
                return True
            if not truth(node.when, names):
                set_state(row, "skipped", message=f"its condition is false: {node.when}")
                return True
            if isinstance(node, HpoNode):
                self.launch_hpo(row, node, names)
            elif isinstance(node, JobNode):
                self.launch_job(row, node, names)
            elif isinstance(node, WorkflowNode):
                self.launch_workflow(row, node, names)
            elif isinstance(node, ServeNode):
                self.launch_serve(row, node, names)
            elif isinstance(node, LoopNode):
                n = node.max_iterations
                limit = check_max_iterations(render(n, names) if isinstance(n, str) else n)
                row.results = {"max_iterations": limit}
                self.start_iteration(row, node, 1)
                set_state(row, "running")
        except _NodeFailure as e:
            set_state(row, "failed", message=str(e))
        except (ExpressionError, DefinitionError, ValueError) as e:
            set_state(row, "failed", message=str(e))
        return True

    def fan_out(self, row: WorkflowNodeRow, node: Any, names: dict[str, Any]) -> None:
        items = render(node.for_each, names) if isinstance(node.for_each, str) else node.for_each
        if not isinstance(items, list):
            raise _NodeFailure(f"for_each must give a list, got {type(items).__name__}: {items!r}")
        row.fan_out = True
        set_state(row, "running")
        for i, item in enumerate(items):
            self.add_row(
                row.name,
                row.kind,
                f"{row.path}[{i}]",
                parent_id=row.id,
                iteration=row.iteration,
                item_index=i,
                item=item,
            )
        if not items:
            set_state(row, "done", message="for_each gave no items")

    def _task_spec(self, raw: dict[str, Any]) -> TaskSpec:
        try:
            spec = TaskSpec.model_validate(raw)
        except ValidationError as e:
            _loc, msg = _pydantic_messages(e)
            raise _NodeFailure(f"the task spec is not valid: {msg}") from None
        try:
            task_check(spec)
        except ValueError as e:
            raise _NodeFailure(f"the task spec is not valid: {e}") from None
        if spec.sandbox is not None:
            try:
                TaskService._check_sandbox(self.s, Caller(self.wf.owner, Role.user), spec.sandbox)
            except ApiError as e:
                raise _NodeFailure(e.message) from None
        return spec

    def _task_name(self, row: WorkflowNodeRow) -> str:
        return f"{self.wf.name}#{self.wf.id}.{row.path}"[:250]

    def _start_task(self, row: WorkflowNodeRow, spec: TaskSpec, inputs: dict[str, Any]) -> None:
        task = insert_task(self.s, self.wf.owner, spec)
        row.task_id = task.id
        row.inputs = inputs
        set_state(row, "running")
        self.started_tasks = True

    def launch_hpo(self, row: WorkflowNodeRow, node: HpoNode, names: dict[str, Any]) -> None:
        raw = render(node.spec, names)
        if not isinstance(raw, dict):
            raise _NodeFailure("spec must be an object")
        raw.setdefault("outDS", self._task_name(row))
        if self.spec.sandbox is not None:
            raw.setdefault("sandbox", self.spec.sandbox)
        spec = self._task_spec(raw)
        self._start_task(row, spec, {"spec": spec.model_dump(mode="json", exclude_unset=True)})

    def launch_job(self, row: WorkflowNodeRow, node: JobNode, names: dict[str, Any]) -> None:
        values = {f: render(getattr(node, f), names) for f in JOB_FIELDS}
        values["inputs"] = render(node.inputs, names)
        try:
            raw = job_task_spec(node, values, name=self._task_name(row), sandbox=self.spec.sandbox)
        except (TypeError, ValueError) as e:
            raise _NodeFailure(str(e)) from None
        spec = self._task_spec(raw)
        self._start_task(row, spec, {"inputs": values["inputs"], "exec": values["exec"]})

    def launch_workflow(self, row: WorkflowNodeRow, node: WorkflowNode, names: dict[str, Any]) -> None:
        sub = node.workflow
        assert sub is not None
        params = merge_params(sub, render(node.params, names))
        check_definition(sub, params, task_check)
        child = insert_workflow(
            self.s, self.wf.owner, sub, params, parent_node_id=row.id, sandbox=self.spec.sandbox
        )
        row.child_workflow_id = child.id
        row.inputs = {"params": params}
        set_state(row, "running")

    def launch_serve(self, row: WorkflowNodeRow, node: ServeNode, names: dict[str, Any]) -> None:
        """``model:`` is done at once (its results name it); ``task:`` waits in :meth:`poll_serve`
        for the task's models to be registered."""
        if node.model is not None:
            ref = render(node.model, names)
            name, sep, version = str(ref).rpartition(":")
            if not sep or not name or not version.isdigit():
                raise _NodeFailure(f"model: NAME:VERSION of a registered model, got {ref!r}")
            m = {"name": name, "version": version, "uri": f"models:/{name}/{version}"}
            row.inputs = {"model": ref}
            row.results = {"models": [m], **m}
            set_state(row, "running")
            set_state(row, "done")
            return
        tid = render(node.task, names)
        if isinstance(tid, bool) or not isinstance(tid, int) or tid < 1:
            raise _NodeFailure(f"task: a task id is needed, got {tid!r}")
        task = find_task(self.s, task_id=tid)
        if task is None or task.owner != self.wf.owner:
            raise _NodeFailure(f"task: task {tid} does not exist (or is not {self.wf.owner}'s)")
        row.task_id = tid
        row.inputs = {"task": tid, "timeout": node.timeout}
        set_state(row, "running")

    def poll_serve(self, row: WorkflowNodeRow, task: TaskRow) -> bool:
        if task.state != "finished":
            set_state(row, "failed", message=f"task {task.id} {task.state}: no model to serve")
            return True
        models = task_models(self.s, task)
        bad = [m for m in models if m.status in ("no_model", "error")]
        if bad:
            seg = f"segment {bad[0].segment}: " if bad[0].segment else ""
            set_state(row, "failed", message=f"task {task.id}: {seg}{bad[0].detail or bad[0].status}")
            return True
        if any(m.status == "pending" for m in models):
            timeout = float((row.inputs or {}).get("timeout", 600))
            ended = task.finished_at or task.updated_at
            if ended is not None and (utcnow() - _aware(ended)).total_seconds() > timeout:
                set_state(
                    row,
                    "failed",
                    message=f"task {task.id}: its models were not registered within {timeout:g} s "
                    "of its end (is the server started with --mlflow-uri?)",
                )
                return True
            return False
        ms = [
            {
                "name": m.name,
                "version": m.version,
                "uri": m.uri,
                "segment": m.segment,
                "point_id": m.point_id,
                "loss": m.loss,
            }
            for m in models
        ]
        row.results = {"task_id": task.id, "models": ms, **{k: ms[0][k] for k in ("name", "version", "uri")}}
        set_state(row, "done")
        return True

    def start_iteration(self, loop: WorkflowNodeRow, node: LoopNode, k: int) -> None:
        loop.iteration = k
        for body in node.nodes:
            self.add_row(body.name, body.kind, f"{loop.path}#{k}.{body.name}", parent_id=loop.id, iteration=k)

    def advance_loop(self, row: WorkflowNodeRow) -> bool:
        body = list(self.group(row, row.iteration).values())
        if any(r.state not in NODE_TERMINAL for r in body):
            return False
        k = row.iteration
        bad = [r for r in body if r.state in ("failed", "cancelled")]
        if bad:
            set_state(row, "failed", message=f"iteration {k}: " + _failed_message(bad))
            return True
        node = self.an.nodes[row.name].node
        assert isinstance(node, LoopNode)
        limit = int((row.results or {}).get("max_iterations", 1))
        try:
            again = truth(node.while_, self.names(self.chain(row) + [(row, k)]))
        except ExpressionError as e:
            set_state(row, "failed", message=f"while, after iteration {k}: {e}")
            return True
        if again and k < limit:
            self.start_iteration(row, node, k + 1)
            return True
        row.results = {**(row.results or {}), "stopped": "condition" if not again else "max_iterations"}
        set_state(
            row,
            "done",
            message="stopped by its while condition" if not again else f"stopped at max_iterations ({limit})",
        )
        return True

    def advance_fan_out(self, row: WorkflowNodeRow) -> bool:
        inst = self.children(row)
        if any(r.state not in NODE_TERMINAL for r in inst):
            return False
        bad = sorted((r for r in inst if r.state in ("failed", "cancelled")), key=lambda r: r.item_index or 0)
        if bad:
            set_state(row, "failed", message=_failed_message(bad, "instance"))
        else:
            set_state(row, "done")
        return True

    def poll(self, row: WorkflowNodeRow) -> bool:
        if row.task_id is not None:
            task = find_task(self.s, task_id=row.task_id)
            if task is None:
                set_state(row, "failed", message=f"its task {row.task_id} no longer exists")
                return True
            if task.state not in TERMINAL_TASK_STATES:
                return False
            if row.kind == "serve":
                return self.poll_serve(row, task)
            ok, results, message = (self._hpo_results if row.kind == "hpo" else self._job_results)(task)
            row.results = results
            set_state(row, "done" if ok else "failed", message=message)
            return True
        child = find_workflow(self.s, workflow_id=row.child_workflow_id)
        if child is None:
            set_state(row, "failed", message=f"its sub-workflow {row.child_workflow_id} no longer exists")
            return True
        if child.state not in WORKFLOW_TERMINAL:
            return False
        row.results = {"workflow_id": child.id, "state": child.state, "outputs": child.outputs or {}}
        ok = child.state == "succeeded"
        set_state(
            row,
            "done" if ok else "failed",
            message=None if ok else f"sub-workflow {child.id} {child.state}: {child.message}",
        )
        return True

    def _hpo_results(self, task: TaskRow) -> tuple[bool, dict[str, Any], str | None]:
        counts = counts_by_task(self.s, [task.id])[task.id].model_dump()
        results: dict[str, Any] = {"task_id": task.id, "state": task.state, "counts": counts}
        if task.state != "finished":
            return False, results, f"task {task.id} {task.state}: {task.message or ''}".rstrip(": ")
        if not task_succeeded(task.state, counts["evaluated"]):  # the CLI's rule (phpo wait exits 1)
            return (
                False,
                results,
                f"task {task.id} finished without any evaluated point ({counts['failed']} failed)",
            )
        best = best_points(self.s, task)

        def entry(b: Any) -> dict[str, Any]:
            out = {"params": b.params, "loss": b.loss, "point_id": b.point_id, "segment": b.segment}
            if b.pareto:
                out["pareto"] = [
                    {"params": p.params, "loss": p.loss, "point_id": p.point_id} for p in b.pareto
                ]
            return out

        results["segments"] = [entry(b) for b in best]
        # a segmented task's ``best`` is its first segment's (each segment has its own in ``segments``)
        results["best"] = entry(best[0]) if best and best[0].params is not None else None
        return True, results, None

    def _job_results(self, task: TaskRow) -> tuple[bool, dict[str, Any], str | None]:
        point = first_point(self.s, task_id=task.id)
        results: dict[str, Any] = {"task_id": task.id, "state": task.state}
        if point is not None and point.state == "evaluated":
            results["outputs"] = {**(point.metrics or {}), "loss": point.loss}
            return True, results, None
        if point is not None and point.error:
            return False, results, f"job failed: {point.error}"
        return False, results, f"task {task.id} {task.state} without a result: {task.message or 'no message'}"

    def finish(self, top: list[WorkflowNodeRow]) -> None:
        bad = [r for r in top if r.state in ("failed", "cancelled")]
        if bad:
            set_state(self.wf, "failed", message=_failed_message(bad))
            return
        try:
            self.wf.outputs = render(self.spec.outputs, self.names([])) if self.spec.outputs else {}
        except ExpressionError as e:
            set_state(self.wf, "failed", message=f"outputs: {e}")
            return
        set_state(self.wf, "succeeded", message=None)


def _aware(t: Any) -> Any:
    """SQLite hands back naive datetimes (stored as UTC)."""
    from datetime import UTC

    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


class _NodeFailure(Exception):
    """A node that cannot start; its message becomes the node's."""


__all__ = ["WorkflowEngine", "cancel_workflow", "insert_task", "insert_workflow", "validate_submission"]
