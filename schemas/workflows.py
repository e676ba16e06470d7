"""DAG workflows: the definition a user writes (YAML or JSON) and the records the API returns.

A workflow has ``params`` (defaults, overridable at submit) and ``nodes``. A node is

- ``hpo``: a whole HPO task (``spec`` is a :class:`~phpo.schemas.tasks.TaskSpec`);
- ``job``: one evaluation-style run of ``exec`` (optionally in ``container``) on an agent: the
  resolved ``inputs`` are written to the input JSON, and the output JSON's ``metrics`` (plus its
  ``loss``) become the node's ``outputs``;
- ``workflow``: a sub-workflow (inline ``workflow:``; ``phpo workflow submit`` inlines ``file:``);
- ``loop``: a group of ``nodes`` repeated while ``while`` holds, at most ``max_iterations`` times;
- ``serve``: the end of a DAG: the registered models of a task (``task: ${{ nodes.train.task_id }}``,
  one per segment, waited for until the MLflow bridge has registered them) or one registered
  model (``model: NAME:VERSION``); its results name them (``models``, ``name``, ``version``,
  ``uri``), and ``phpo serve --workflow ID`` serves every done serve node's models.

Every value may hold ``${{ expression }}``: ``params.x``, ``nodes.search.best.params.lr``,
``nodes.train.outputs.auc``, ``nodes.x.status``, ``item`` (in a ``for_each`` node), ``loop.iteration``
and ``loop.previous.<node>`` (inside a loop). An expression that is the whole string keeps its
type (a number stays a number); inside a longer string it is formatted as text. Conditions
(``when``, ``while``) may also be written as a bare expression. Expressions are evaluated with
simpleeval on the server (never ``eval``). The full reference is ``examples/workflows/README.md``; the JSON
Schema generated from these models is ``docs/workflow-schema.json``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .states import NodeState, WorkflowState

NODE_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
NODE_KINDS = ("hpo", "job", "workflow", "loop", "serve")
MODEL_REF = r"^[A-Za-z0-9._\-]+:[0-9]+$"
TRIGGERS = ("all_succeeded", "none_failed", "all_done")
MAX_ITERATIONS = 1000

Expr = str
"""A string holding ``${{ ... }}`` (or, for conditions, a bare expression)."""


class _NodeBase(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    name: str = Field(
        min_length=1,
        max_length=100,
        pattern=NODE_NAME,
        description="unique in the workflow (loop bodies included); used as nodes.<name> in expressions",
    )
    after: list[str] = Field(
        default_factory=list,
        description="nodes of the same group this one waits for; a node also waits for every node its "
        "expressions reference",
    )
    when: bool | Expr | None = Field(
        default=None, description="run only when this condition holds; otherwise the node is skipped"
    )
    trigger: Literal["all_succeeded", "none_failed", "all_done"] = Field(
        default="all_succeeded",
        description="all_succeeded: run when every dependency is done (a failed one fails this node, a "
        "skipped one skips it); none_failed: skipped dependencies are fine; all_done: run once every "
        "dependency has ended, whatever its state",
    )

    @field_validator("after", mode="before")
    @classmethod
    def _one_or_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class _FanOut(BaseModel):
    for_each: list[Any] | Expr | None = Field(
        default=None,
        description="run the node once per item (``${{ item }}`` in its values); later nodes read "
        "nodes.<name>.results (a list, in item order)",
    )


class HpoNode(_NodeBase, _FanOut):
    kind: Literal["hpo"]
    spec: dict[str, Any] = Field(
        description="a task spec (phpo.schemas.TaskSpec, the upstream option names); any value may be an "
        "expression. Results: task_id, state, best.params, best.loss (and segments for segmented tasks)"
    )


class JobNode(_NodeBase, _FanOut):
    kind: Literal["job"]
    exec: str = Field(min_length=1, description="the command, as evaluationExec of a task")
    container: str | None = Field(default=None, description="image to run it in (evaluationContainer)")
    inputs: dict[str, Any] | Expr = Field(
        default_factory=dict, description="written as the input JSON; values may be expressions"
    )
    input_file: str = "input.json"
    output_file: str = Field(
        default="output.json",
        description='the evaluation contract\'s output: {"status": 0, "loss": x, "metrics": {...}}; '
        "the node's outputs are the metrics plus loss",
    )
    site: str | None = None
    architecture: str | None = None
    timeout: float | None = Field(default=None, gt=0, description="seconds")
    max_attempts: int = Field(default=1, ge=1, le=100)
    sandbox: str | None = Field(default=None, description="sandbox artifact id; default the workflow's")


class WorkflowNode(_NodeBase, _FanOut):
    kind: Literal["workflow"]
    workflow: WorkflowSpec | None = Field(default=None, description="the sub-workflow's definition")
    file: str | None = Field(
        default=None, description="a definition file, inlined into 'workflow' by phpo workflow submit"
    )
    params: dict[str, Any] = Field(default_factory=dict, description="the sub-workflow's params")


class LoopNode(_NodeBase):
    kind: Literal["loop"]
    nodes: list[Node] = Field(min_length=1, description="the body, run once per iteration")
    while_: bool | Expr = Field(
        alias="while",
        description="checked after each iteration (nodes.<body node> is that iteration's result, "
        "loop.iteration its number); another iteration starts while it holds",
    )
    max_iterations: int | Expr = Field(
        description=f"at most this many iterations (1..{MAX_ITERATIONS}); may be ${{{{ params.x }}}}"
    )


class ServeNode(_NodeBase, _FanOut):
    kind: Literal["serve"]
    task: int | Expr | None = Field(
        default=None,
        description="the task whose registered models (one per segment) are served, e.g. "
        "${{ nodes.train.task_id }}; the node waits until they are registered",
    )
    model: str | None = Field(default=None, description="or one registered model, NAME:VERSION")
    timeout: float = Field(
        default=600,
        gt=0,
        description="seconds to wait, once the task has ended, for its "
        "models to be registered (the server needs MLflow: --mlflow-uri)",
    )

    @field_validator("task")
    @classmethod
    def _task_id(cls, v: Any) -> Any:
        if isinstance(v, bool) or (isinstance(v, int) and v < 1):
            raise ValueError(f"a task id (a whole number from 1) or an expression, got {v!r}")
        return v

    @field_validator("model")
    @classmethod
    def _model_ref(cls, v: Any) -> Any:
        import re

        if v is not None and "${{" not in v and not re.match(MODEL_REF, v):
            raise ValueError(
                f"NAME:VERSION of a registered model (phpo best ID --model prints it), got {v!r}"
            )
        return v


Node = Annotated[HpoNode | JobNode | WorkflowNode | LoopNode | ServeNode, Field(discriminator="kind")]
NODE_MODELS: dict[str, type[BaseModel]] = {
    "hpo": HpoNode,
    "job": JobNode,
    "workflow": WorkflowNode,
    "loop": LoopNode,
    "serve": ServeNode,
}


class WorkflowSpec(BaseModel):
    """A workflow definition (the YAML/JSON file)."""

    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, json_schema_extra={"title": "phpo workflow definition"}
    )

    name: str = Field(min_length=1, max_length=200)
    description: str | None = None
    params: dict[str, Any] = Field(default_factory=dict, description="parameters and their defaults")
    nodes: list[Node] = Field(min_length=1)
    outputs: dict[str, Any] = Field(
        default_factory=dict, description="values (expressions) computed when the workflow succeeds"
    )
    sandbox: str | None = Field(
        default=None,
        description="sandbox artifact id given to every node (phpo workflow submit uploads "
        "the definition file's folder)",
    )


class WorkflowSubmit(BaseModel):
    """``POST /workflows``. ``definition`` is checked by the server node by node, so that an error
    names the node (see :class:`WorkflowSpec` for its form)."""

    model_config = ConfigDict(extra="forbid")
    definition: dict[str, Any] = Field(description="a WorkflowSpec (docs/workflow-schema.json)")
    params: dict[str, Any] = Field(default_factory=dict, description="overrides of the definition's params")


class NodeProgress(BaseModel):
    """Points of a running node's task, for progress displays."""

    evaluated: int = 0
    failed: int = 0
    running: int = 0
    total: int = 0


class WorkflowNodeRecord(BaseModel):
    """One node instance. Loop bodies carry their ``iteration`` (1-based); fan-out instances their
    ``item_index`` and ``item``. ``children``: a loop's body nodes of every iteration, a fan-out
    node's instances, or a sub-workflow's nodes."""

    model_config = ConfigDict(extra="ignore")
    id: int
    name: str
    path: str = Field(description="e.g. rounds#2.search or train[1]")
    kind: Literal["hpo", "job", "workflow", "loop", "serve"]
    state: NodeState
    iteration: int | None = Field(
        default=None, description="loop body: its iteration; loop: iterations started"
    )
    item_index: int | None = None
    item: Any = None
    fan_out: bool = False
    task_id: int | None = None
    workflow_id: int | None = Field(default=None, description="the sub-workflow, for workflow nodes")
    message: str | None = None
    results: dict[str, Any] = Field(default_factory=dict)
    progress: NodeProgress | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    children: list[WorkflowNodeRecord] = Field(default_factory=list)


class Workflow(BaseModel):
    """A workflow as the API returns it. Lists leave ``nodes`` and ``definition`` empty."""

    model_config = ConfigDict(extra="ignore")
    id: int
    name: str
    owner: str
    state: WorkflowState
    message: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    outputs: dict[str, Any] | None = None
    parent_node_id: int | None = Field(default=None, description="set for a sub-workflow")
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    counts: dict[str, int] = Field(default_factory=dict, description="node instances per state")
    nodes: list[WorkflowNodeRecord] = Field(default_factory=list)
    definition: dict[str, Any] | None = None


WorkflowNode.model_rebuild()
LoopNode.model_rebuild()
WorkflowSpec.model_rebuild()
WorkflowNodeRecord.model_rebuild()


def workflow_json_schema() -> dict[str, Any]:
    """The JSON Schema of a definition file (published as docs/workflow-schema.json)."""
    schema = WorkflowSpec.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


if __name__ == "__main__":  # python -m phpo.schemas.workflows > docs/workflow-schema.json
    import json

    print(json.dumps(workflow_json_schema(), indent=2))
