"""Checks of a workflow definition at submit, and the dependency analysis the engine reuses.

Everything that can be known before anything runs is checked here, so a mistake is a 422 that
names the node (and nothing is stored): the form of each node (unknown kinds and fields), names
used twice, ``after`` naming nodes that are not in the same group, references to unknown nodes
or params, expressions that do not parse, cycles outside loops, and each embedded task spec
(as far as it does not depend on results of other nodes; the rest is checked when the node
starts, and a bad value then fails that node with the same message).

Groups: the workflow's top-level nodes form one group, each loop body another. A node waits
for the nodes of its group named in ``after`` and for those its expressions read. An
expression may also read nodes of enclosing groups; the loop containing the reader then waits
for them. Nodes inside a loop body are not visible outside it: read them through the loop
(``nodes.<loop>.last.<node>``, ``nodes.<loop>.results[i].<node>``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from phpo.schemas.errors import validation_messages as _pydantic_messages
from phpo.schemas.tasks import TaskSpec
from phpo.schemas.workflows import (
    MAX_ITERATIONS,
    NODE_KINDS,
    NODE_MODELS,
    NODE_NAME,
    HpoNode,
    JobNode,
    LoopNode,
    ServeNode,
    WorkflowNode,
    WorkflowSpec,
)
from pydantic import ValidationError

from .expressions import (
    ExpressionError,
    References,
    condition_references,
    expressions_in,
    render,
    value_references,
    walk_strings,
)

AnyNode = HpoNode | JobNode | WorkflowNode | LoopNode | ServeNode
JOB_SPACE_PLACEHOLDER = "_workflow_node"


class DefinitionError(ValueError):
    """A definition mistake. ``field`` is a dotted path such as ``nodes.train.inputs.lr``."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message, self.field = message, field


def _node_error(qual: str, what: str, message: str) -> DefinitionError:
    return DefinitionError(
        f"node '{qual}': {what + ': ' if what else ''}{message}",
        field=f"nodes.{qual}" + (f".{what}" if what else ""),
    )


# --------------------------------------------------------------------------- form


def parse_definition(raw: Any, prefix: str = "") -> WorkflowSpec:
    """The :class:`WorkflowSpec` of ``raw``, each node checked on its own first so an error names
    it (``prefix`` qualifies the names of a sub-workflow's nodes: ``sub.inner``)."""
    if not isinstance(raw, dict):
        raise DefinitionError(
            f"{prefix or 'definition'}: a workflow definition must be an object with name, params and nodes",
            field=prefix.rstrip(".") or "definition",
        )
    nodes = raw.get("nodes")
    if isinstance(nodes, list):
        _check_raw_nodes(nodes, prefix)
    try:
        return WorkflowSpec.model_validate(raw)
    except ValidationError as e:
        loc, msg = _pydantic_messages(e)
        where = f"node '{prefix.rstrip('.')}': workflow" if prefix else "definition"
        raise DefinitionError(
            f"{where}: {msg}",
            field=(f"nodes.{prefix}workflow" if prefix else "definition") + (f".{loc}" if loc else ""),
        ) from None


def _check_raw_nodes(nodes: list[Any], prefix: str) -> None:
    for i, raw in enumerate(nodes):
        if not isinstance(raw, dict):
            raise DefinitionError(
                f"nodes[{i}]: a node must be an object with name and kind", field=f"nodes[{i}]"
            )
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise DefinitionError(f"nodes[{i}]: every node needs a name", field=f"nodes[{i}].name")
        qual = prefix + name
        if not re.match(NODE_NAME, name):
            raise _node_error(
                qual,
                "name",
                "use letters, digits and '_' (not starting with a digit), so "
                "expressions can say nodes.<name>",
            )
        kind = raw.get("kind")
        if kind not in NODE_MODELS:
            raise _node_error(qual, "kind", f"unknown kind {kind!r} (known: {', '.join(NODE_KINDS)})")
        if kind == "loop" and isinstance(raw.get("nodes"), list):
            _check_raw_nodes(raw["nodes"], prefix)
        if kind == "serve" and (raw.get("task") is None) == (raw.get("model") is None):
            raise _node_error(
                qual,
                "task",
                "a serve node needs either 'task' (the task whose registered models "
                "it serves, e.g. ${{ nodes.train.task_id }}) or 'model' (NAME:VERSION), not "
                + ("both" if raw.get("task") is not None else "neither"),
            )
        if kind == "workflow":
            if raw.get("workflow") is None:
                if raw.get("file"):
                    raise _node_error(
                        qual,
                        "file",
                        f"{raw['file']!r} must be inlined as 'workflow:' before "
                        "submitting (phpo workflow submit does it)",
                    )
                raise _node_error(qual, "workflow", "a workflow node needs its definition under 'workflow:'")
            parse_definition(raw["workflow"], prefix=qual + ".")
        try:
            NODE_MODELS[kind].model_validate(raw)
        except ValidationError as e:
            loc, msg = _pydantic_messages(e)
            raise _node_error(qual, loc.split(".")[0] if loc else "", msg) from None


# --------------------------------------------------------------------------- analysis


@dataclass
class NodeInfo:
    node: AnyNode
    loops: tuple[str, ...]  # enclosing loops, outermost first
    deps: set[str] = field(default_factory=set)  # nodes of its own group it waits for


@dataclass
class Analysis:
    """Where each node sits and what it waits for; the engine's map of a definition."""

    spec: WorkflowSpec
    nodes: dict[str, NodeInfo]
    top: list[str]  # top-level names in definition order
    bodies: dict[str, list[str]]  # loop name -> its body's names

    def group(self, loop: str | None) -> list[str]:
        return self.top if loop is None else self.bodies[loop]


def iter_nodes(
    nodes: list[AnyNode], loops: tuple[str, ...] = ()
) -> Iterator[tuple[AnyNode, tuple[str, ...]]]:
    for n in nodes:
        yield n, loops
        if isinstance(n, LoopNode):
            yield from iter_nodes(n.nodes, loops + (n.name,))


def node_fields(node: AnyNode) -> list[tuple[str, Any, str]]:
    """(field, value, how) of every value of a node that may hold expressions. ``how``:
    ``value`` (templates), ``condition``, ``body_condition`` (a loop's while, read in its body),
    ``params_only`` (a loop's max_iterations)."""
    out: list[tuple[str, Any, str]] = [("when", node.when, "condition")]
    if isinstance(node, LoopNode):
        out.append(("while", node.while_, "body_condition"))
        if isinstance(node.max_iterations, str):
            out.append(("max_iterations", node.max_iterations, "params_only"))
        return out
    if node.for_each is not None and isinstance(node.for_each, str):
        out.append(("for_each", node.for_each, "value"))
    if isinstance(node, HpoNode):
        out.append(("spec", node.spec, "value"))
    elif isinstance(node, JobNode):
        for f in (
            "exec",
            "container",
            "inputs",
            "input_file",
            "output_file",
            "site",
            "architecture",
            "sandbox",
        ):
            out.append((f, getattr(node, f), "value"))
    elif isinstance(node, WorkflowNode):
        out.append(("params", node.params, "value"))
    elif isinstance(node, ServeNode):
        out += [("task", node.task, "value"), ("model", node.model, "value")]
    return out


def _refs(value: Any, how: str) -> list[tuple[str, References | ExpressionError]]:
    """(sub-path, references or the expression's error) per string, so errors point at the value."""
    if how in ("condition", "body_condition"):
        try:
            return [("", condition_references(value))]
        except ExpressionError as e:
            return [("", e)]
    out: list[tuple[str, References | ExpressionError]] = []
    for path, text in walk_strings(value):
        try:
            out.append((path, value_references(text)))
        except ExpressionError as e:
            out.append((path, e))
    return out


def analyse(spec: WorkflowSpec, prefix: str = "") -> Analysis:
    """Names, groups, references and dependencies of a parsed definition; raises
    :class:`DefinitionError` naming the node for every static mistake."""
    infos: dict[str, NodeInfo] = {}
    bodies: dict[str, list[str]] = {}
    for node, loops in iter_nodes(list(spec.nodes)):
        if node.name in infos:
            raise _node_error(
                prefix + node.name,
                "name",
                "used twice (node names are unique in a workflow, loop bodies included)",
            )
        infos[node.name] = NodeInfo(node, loops)
        if isinstance(node, LoopNode):
            bodies[node.name] = [n.name for n in node.nodes]
    declared = set(spec.params)

    def check_ref(qual: str, what: str, reader_loops: tuple[str, ...], ref: str, reader: str | None) -> None:
        """Record that a node whose group is ``reader_loops`` reads ``ref``."""
        if ref not in infos:
            close = [n for n in infos if n.lower() == ref.lower()]
            raise _node_error(
                qual,
                what,
                f"unknown node '{ref}'"
                + (f" (did you mean '{close[0]}'?)" if close else f" (nodes: {', '.join(infos)})"),
            )
        ref_loops = infos[ref].loops
        if reader_loops[: len(ref_loops)] != ref_loops:
            inner = ref_loops[len(_common(reader_loops, ref_loops))]
            raise _node_error(
                qual,
                what,
                f"node '{ref}' is inside loop '{inner}' and not visible here; read it "
                f"as nodes.{inner}.last.{ref} or nodes.{inner}.results[i].{ref}",
            )
        if len(ref_loops) == len(reader_loops):
            if ref == reader:
                raise _node_error(qual, what, "a node cannot read its own results")
            if reader is not None:
                infos[reader].deps.add(ref)
            return
        holder = reader_loops[len(ref_loops)]  # the loop of ref's group that contains the reader
        if ref == holder:
            raise _node_error(
                qual,
                what,
                f"inside loop '{ref}', read the loop's own state with loop.iteration and loop.previous",
            )
        infos[holder].deps.add(ref)

    for name, info in infos.items():
        node, qual = info.node, prefix + name
        for dep in node.after:
            if dep not in infos:
                raise _node_error(qual, "after", f"unknown node '{dep}' (nodes: {', '.join(infos)})")
            if infos[dep].loops != info.loops:
                raise _node_error(
                    qual,
                    "after",
                    f"'{dep}' is not in the same group as '{name}' (after names "
                    "nodes of the same loop body, or top-level nodes for top-level nodes)",
                )
            if dep == name:
                raise _node_error(qual, "after", "a node cannot wait for itself")
            info.deps.add(dep)
        for fname, value, how in node_fields(node):
            if value is None:
                continue
            for sub, refs in _refs(value, how):
                what = fname + (f".{sub}" if sub and not sub.startswith("[") else sub)
                if isinstance(refs, ExpressionError):
                    raise _node_error(qual, what, str(refs))
                unknown = sorted(refs.params - declared)
                if unknown:
                    raise _node_error(
                        qual,
                        what,
                        f"unknown parameter '{unknown[0]}' (params: "
                        f"{', '.join(sorted(declared)) or 'none declared'})",
                    )
                if "item" in refs.roots and (fname == "for_each" or getattr(node, "for_each", None) is None):
                    raise _node_error(qual, what, "'item' exists only in the values of a node with for_each")
                in_body = how == "body_condition" or bool(info.loops)
                if "loop" in refs.roots and not in_body:
                    raise _node_error(qual, what, "'loop' exists only inside a loop body (and in its while)")
                if how == "params_only" and (refs.nodes or refs.roots - {"params", "workflow"}):
                    raise _node_error(qual, what, "may only read params")
                reader_loops = info.loops + ((name,) if how == "body_condition" else ())
                for ref in sorted(refs.nodes):
                    if how == "body_condition":
                        if ref == name:
                            raise _node_error(
                                qual,
                                what,
                                "a loop's while reads its body's nodes and "
                                "loop.iteration, not the loop itself",
                            )
                        check_ref(qual, what, reader_loops, ref, None)
                    else:
                        check_ref(qual, what, reader_loops, ref, name)
    top = [n.name for n in spec.nodes]
    for group in [top, *bodies.values()]:
        _check_cycles(group, infos, prefix)
    for key, value in spec.outputs.items():
        try:
            for _sub, refs in _refs(value, "value"):
                if isinstance(refs, ExpressionError):
                    raise refs
                unknown = sorted(refs.params - declared)
                if unknown:
                    raise ExpressionError(f"unknown parameter '{unknown[0]}'")
                if refs.roots & {"item", "loop"}:
                    raise ExpressionError("outputs read params and nodes only")
                for ref in sorted(refs.nodes):
                    if ref not in infos:
                        raise ExpressionError(f"unknown node '{ref}'")
                    if infos[ref].loops:
                        raise ExpressionError(
                            f"node '{ref}' is inside loop '{infos[ref].loops[0]}'; read it "
                            f"as nodes.{infos[ref].loops[0]}.last..."
                        )
        except ExpressionError as e:
            where = f"node '{prefix.rstrip('.')}': workflow outputs" if prefix else "outputs"
            raise DefinitionError(f"{where}.{key}: {e}", field=f"outputs.{key}") from None
    return Analysis(spec, infos, top, bodies)


def _common(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def _check_cycles(group: list[str], infos: dict[str, NodeInfo], prefix: str) -> None:
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for d in sorted(infos[n].deps):
            if state.get(d) == 1:
                cycle = path[path.index(d) :] + [d] if d in path else [n, d]
                raise _node_error(
                    prefix + d,
                    "after",
                    "dependency cycle " + " -> ".join(cycle) + " (only a loop may repeat nodes)",
                )
            if state.get(d) is None:
                visit(d, path + [d])
        state[n] = 2

    for n in group:
        if state.get(n) is None:
            visit(n, [n])


# --------------------------------------------------------------------------- params and task specs


def merge_params(spec: WorkflowSpec, overrides: dict[str, Any], where: str = "params") -> dict[str, Any]:
    unknown = sorted(set(overrides) - set(spec.params))
    if unknown:
        raise DefinitionError(
            f"{where}: unknown parameter '{unknown[0]}' (the workflow declares: "
            f"{', '.join(sorted(spec.params)) or 'none'})",
            field=f"{where}.{unknown[0]}",
        )
    return {**spec.params, **overrides}


def job_task_spec(node: JobNode, values: dict[str, Any], *, name: str, sandbox: str | None) -> dict[str, Any]:
    """The one-point task that runs a job node: a grid over the (fixed) inputs, one point,
    ``max_attempts`` tries. ``values`` holds the node's resolved fields."""
    inputs = values["inputs"]
    if not isinstance(inputs, dict):
        raise TypeError(f"inputs must be an object, got {type(inputs).__name__}")
    space = {str(k): {"type": "fixed", "value": v} for k, v in inputs.items()}
    if not space:
        space = {JOB_SPACE_PLACEHOLDER: {"type": "fixed", "value": name}}
    spec: dict[str, Any] = {
        "outDS": name[:250],
        "evaluationExec": values["exec"],
        "searchSpace": space,
        "optimizer": "grid",
        "maxPoints": 1,
        "nParallelEvaluation": 1,
        "nPointsPerIteration": 1,
        "maxAttempts": node.max_attempts,
        "maxEvaluationJobs": node.max_attempts,
        "evaluationInput": values["input_file"],
        "evaluationOutput": values["output_file"],
    }
    for key, target in (
        ("container", "evaluationContainer"),
        ("site", "site"),
        ("architecture", "architecture"),
    ):
        if values.get(key) is not None:
            spec[target] = values[key]
    if node.timeout is not None:
        spec["evaluationTimeout"] = node.timeout
    sb = values.get("sandbox") or sandbox
    if sb is not None:
        spec["sandbox"] = str(sb)
    return spec


class _Unknown:
    """A param whose value is known only when the workflow runs (a sub-workflow's param set from
    another node's results)."""


UNKNOWN = _Unknown()


def _known(value: Any, params: dict[str, Any]) -> bool:
    """Whether every expression in ``value`` can be resolved from params alone."""
    refs = value_references(value)
    if refs.nodes or refs.roots - {"params", "workflow"}:
        return False
    return not any(params.get(p) is UNKNOWN for p in refs.params)


def probe_names(spec: WorkflowSpec, params: dict[str, Any]) -> dict[str, Any]:
    return {"params": params, "workflow": {"id": 0, "name": spec.name}}


TaskCheck = Callable[[TaskSpec], None]


def check_definition(
    spec: WorkflowSpec, params: dict[str, Any], task_check: TaskCheck | None = None, prefix: str = ""
) -> Analysis:
    """Everything :func:`analyse` checks, plus what params alone decide: loop limits, each task
    spec's form (values that depend on other nodes are checked when the node runs) and, for
    sub-workflows, their params and definitions."""
    an = analyse(spec, prefix)
    names = probe_names(spec, params)
    for name, info in an.nodes.items():
        node, qual = info.node, prefix + name
        if isinstance(node, LoopNode):
            if isinstance(node.max_iterations, str) and _known(node.max_iterations, params):
                try:
                    check_max_iterations(render(node.max_iterations, names))
                except (ExpressionError, ValueError) as e:
                    raise _node_error(qual, "max_iterations", str(e)) from None
            elif isinstance(node.max_iterations, int):
                try:
                    check_max_iterations(node.max_iterations)
                except ValueError as e:
                    raise _node_error(qual, "max_iterations", str(e)) from None
        elif isinstance(node, HpoNode):
            _probe_hpo(node, qual, params, names, task_check)
        elif isinstance(node, JobNode):
            _probe_job(node, qual, params, names, task_check)
        elif isinstance(node, WorkflowNode):
            sub = node.workflow
            assert sub is not None  # parse_definition insists
            try:
                sub_params = merge_params(sub, {}, where="params")
                merge_params(sub, node.params, where="params")
            except DefinitionError as e:
                raise _node_error(qual, "params", e.message.split(": ", 1)[1]) from None
            for k, v in node.params.items():
                sub_params[k] = render(v, names) if _known(v, params) else UNKNOWN
            check_definition(sub, sub_params, task_check, prefix=qual + ".")
    return an


def check_max_iterations(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ITERATIONS:
        raise ValueError(f"must be a whole number from 1 to {MAX_ITERATIONS}, got {value!r}")
    return value


def _probe_hpo(
    node: HpoNode, qual: str, params: dict[str, Any], names: dict[str, Any], task_check: TaskCheck | None
) -> None:
    probe: dict[str, Any] = {}
    runtime: list[str] = []
    for key, value in node.spec.items():
        if not _known(value, params):
            runtime.append(key)
            continue
        try:
            probe[key] = render(value, names)
        except ExpressionError as e:
            raise _node_error(qual, f"spec.{key}", str(e)) from None
    for key in runtime:
        f = TaskSpec.model_fields.get(key)
        if f is None:
            probe[key] = node.spec[key]  # refused below as an unknown option
        elif key == "searchSpace":
            probe[key] = {"x": {"type": "fixed", "value": 0}}
        elif f.is_required():
            probe[key] = "probe"
    try:
        ts = TaskSpec.model_validate(probe)
    except ValidationError as e:
        loc, msg = _pydantic_messages(e)
        raise _node_error(qual, f"spec.{loc}" if loc else "spec", msg) from None
    if task_check is not None and not runtime:
        try:
            task_check(ts)
        except ValueError as e:
            raise _node_error(qual, "spec", str(e)) from None


def _probe_job(
    node: JobNode, qual: str, params: dict[str, Any], names: dict[str, Any], task_check: TaskCheck | None
) -> None:
    values: dict[str, Any] = {}
    complete = True
    for f in ("exec", "container", "input_file", "output_file", "site", "architecture", "sandbox"):
        v = getattr(node, f)
        if v is not None and not _known(v, params):
            complete = False
            v = "probe" if f in ("exec", "input_file", "output_file") else None
        try:
            values[f] = render(v, names)
        except ExpressionError as e:
            raise _node_error(qual, f, str(e)) from None
    if isinstance(node.inputs, str):
        values["inputs"] = {}
        complete = False
    else:
        inputs = {}
        for k, v in node.inputs.items():
            try:
                inputs[k] = render(v, names) if _known(v, params) else None
            except ExpressionError as e:
                raise _node_error(qual, f"inputs.{k}", str(e)) from None
        values["inputs"] = inputs
    try:
        ts = TaskSpec.model_validate(job_task_spec(node, values, name=qual, sandbox=None))
    except ValidationError as e:
        loc, msg = _pydantic_messages(e)
        field = {
            "evaluationExec": "exec",
            "evaluationContainer": "container",
            "evaluationInput": "input_file",
            "evaluationOutput": "output_file",
        }.get(loc.split(".")[0], loc)
        raise _node_error(qual, field, msg) from None
    if task_check is not None and complete:
        try:
            task_check(ts)
        except ValueError as e:
            raise _node_error(qual, "", str(e)) from None


def expressions_of(value: Any) -> list[str]:
    """Every expression inside a value (for messages and tests)."""
    return [e for _, text in walk_strings(value) for e in expressions_in(text)]
