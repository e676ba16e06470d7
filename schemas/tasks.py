"""The task spec (every upstream option, docs/compatibility.md, plus phpo's extensions) and the task record.

Field names are the upstream option names (camelCase, no dashes), so a ``--loadJson`` file and
``--dumpJson`` output map onto this model one to one. Unknown keys are refused by name.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .payload import DEFAULT_INPUT, DEFAULT_OUTPUT, DEFAULT_TRAINING_DATA
from .search_space import SearchSpace, SearchSpaceError, parse_search_space
from .states import TaskState

DEFAULT_OPTIMIZER = "optuna.tpe"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)?\s*$")


def parse_duration_minutes(value: float | int | str) -> float:
    """``checkPointInterval``: a bare number is minutes (upstream); ``30s``/``2m``/``1h`` carry a unit.
    Returns seconds."""
    if isinstance(value, bool):
        raise ValueError("expected minutes or a duration such as '30s', '2m', '1h'")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError(f"must be positive, got {value}")
        return float(value) * 60.0
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not minutes or a duration such as '30s', '2m', '1h'")
    n = float(m.group(1))
    if n <= 0:
        raise ValueError(f"must be positive, got {value!r}")
    return n * {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, None: 60}[m.group(2)]


class SegmentSpec(BaseModel):
    """One entry of ``--segmentSpecFile``: a name and the training data of its jobs, as names of
    files in ``--trainingDS`` (``files``) or of constituent datasets of it (``datasets``)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.\-+=:]+$")
    files: list[str] = Field(default_factory=list)
    datasets: list[str] = Field(default_factory=list)


class SegmentSearchSpace(BaseModel):
    """One element of a segmented ``searchSpaceFile`` list."""

    model_config = ConfigDict(extra="forbid")
    model_id: int | str
    search_space: dict[str, Any]


MAX_NODES_PER_POINT = 64


def parse_nodes(v: int | str) -> tuple[int, int]:
    """``nNodesPerPoint``: ``M`` or ``MIN:MAX`` -> (MIN, MAX)."""
    text = str(v).strip()
    parts = text.split(":")
    try:
        if len(parts) > 2 or isinstance(v, bool):
            raise ValueError
        lo, hi = (int(parts[0]), int(parts[-1]))
    except ValueError:
        raise ValueError(f"'{v}' is not a number of agents: give M or MIN:MAX (e.g. 2 or 2:4)") from None
    if not 1 <= lo <= hi <= MAX_NODES_PER_POINT:
        raise ValueError(f"'{v}': need 1 <= MIN <= MAX <= {MAX_NODES_PER_POINT}")
    return lo, hi


class TaskSpec(BaseModel):
    """What a user submits. ``searchSpace``/``segments`` hold the *contents* of
    ``searchSpaceFile``/``segmentSpecFile`` (the client reads the files); the file names are
    kept only so ``--dumpJson`` can write them back."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    # --- upstream options (docs/compatibility.md) ---
    outDS: str | None = Field(default=None, max_length=250, description="task name")
    nParallelEvaluation: int = Field(default=1, ge=1, le=100_000)
    maxPoints: int = Field(default=10, ge=1, le=10_000_000)
    maxEvaluationJobs: int | None = Field(default=None, ge=1, description="default 2 × maxPoints")
    maxPointsPerEvaluationJob: int = Field(default=1, ge=1, le=10_000)
    nPointsPerIteration: int = Field(default=2, ge=1, le=100_000)
    minUnevaluatedPoints: int | None = Field(default=None, ge=0)
    steeringContainer: str | None = None
    steeringExec: str | None = None
    searchSpaceFile: str | None = None
    evaluationContainer: str | None = None
    evaluationExec: str = Field(min_length=1)
    evaluationInput: str = DEFAULT_INPUT
    evaluationTrainingData: str = DEFAULT_TRAINING_DATA
    evaluationOutput: str = DEFAULT_OUTPUT
    evaluationMeta: str | None = None
    evaluationMetrics: str | None = None
    checkPointToSave: str | None = None
    checkPointToLoad: str | None = None
    checkPointInterval: float | str = 5.0  # minutes (a float: an int default warns when serialized)
    architecture: str | None = None
    segmentSpecFile: str | None = None
    trainingDS: str | list[str] | None = None
    site: str | None = None

    # --- phpo extensions ---
    searchSpace: dict[str, Any] | list[dict[str, Any]] | None = Field(
        default=None, description="contents of searchSpaceFile, as the user wrote it"
    )
    segments: list[SegmentSpec] | None = Field(default=None, description="contents of segmentSpecFile")
    optimizer: str | None = Field(
        default=None, description=f"built-in optimizer; default {DEFAULT_OPTIMIZER}"
    )
    optimizerOptions: dict[str, Any] = Field(default_factory=dict)
    directions: list[Literal["minimize", "maximize"]] | None = Field(
        default=None, description="one per objective; default a single 'minimize'"
    )
    maxAttempts: int = Field(default=3, ge=1, le=100)
    penaltyLoss: float | None = Field(default=None, description="upstream-compatible loss for failed points")
    evaluationTimeout: float | None = Field(default=None, gt=0, description="seconds per payload run")
    nProcessesPerPoint: int = Field(
        default=1, ge=1, le=1024, description="processes (ranks) that train one point together on one agent"
    )
    launcher: Literal["none", "torchrun", "horovodrun", "dask"] = Field(
        default="none",
        description="how the agent starts a point's processes: none (one process), torchrun, "
        "horovodrun or dask (a Dask cluster of nProcessesPerPoint workers)",
    )
    nNodesPerPoint: int | str = Field(
        default=1,
        description="agents that train one point together (1 <= M <= 64; needs --launcher torchrun); "
        "MIN:MAX: an elastic point (it starts with MIN agents, takes more up to MAX while it runs, "
        "and trains on while MIN stay)",
    )
    gangTimeout: float = Field(
        default=300.0,
        gt=0,
        le=86400,
        description="seconds a point of several agents may hold the slots of the agents "
        "that joined it before all MIN have; then they are given back",
    )
    pruner: Literal["none", "median", "percentile", "asha", "hyperband", "wilcoxon"] = Field(
        default="none",
        description="stop hopeless points early on their intermediate values (Optuna's pruners)",
    )
    prunerOptions: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of the Optuna pruner class"
    )
    prunerObjective: int | str | None = Field(
        default=None, description="multi-objective tasks: the objective (index or name) the pruner watches"
    )
    objectiveNames: list[str] | None = Field(default=None, description="names of the objectives, in order")
    intermediateMetric: str | None = Field(
        default=None,
        max_length=250,
        description="name of the payload's own MLflow metric whose history per step is its intermediate values",
    )
    trainingFiles: list[str] = Field(default_factory=list, description="resolved trainingDS file list")
    sandbox: str | None = Field(default=None, description="id of the uploaded sandbox tarball")

    @field_validator("checkPointInterval")
    @classmethod
    def _interval(cls, v: float | str) -> float | str:
        parse_duration_minutes(v)
        return v

    @field_validator("checkPointToSave")
    @classmethod
    def _ckpt(cls, v: str | None) -> str | None:
        if v is not None:
            for item in v.split(","):
                item = item.strip()
                if not item or item.startswith("/") or ".." in item.split("/"):
                    raise ValueError(f"'{item}' must be a relative path inside the working directory")
        return v

    @field_validator(
        "evaluationInput",
        "evaluationTrainingData",
        "evaluationOutput",
        "evaluationMeta",
        "evaluationMetrics",
        "checkPointToLoad",
    )
    @classmethod
    def _relname(cls, v: str | None) -> str | None:
        if v is not None and (not v or v.startswith("/") or ".." in v.split("/")):
            raise ValueError(f"'{v}' must be a relative file name inside the working directory")
        return v

    @field_validator("nNodesPerPoint")
    @classmethod
    def _nodes(cls, v: int | str) -> int | str:
        parse_nodes(v)
        return v

    @model_validator(mode="after")
    def _check(self) -> TaskSpec:
        if self.nodes[1] > 1 and self.launcher != "torchrun":
            raise ValueError("nNodesPerPoint: a point on several agents needs --launcher torchrun")
        if self.nProcessesPerPoint > 1 and self.launcher == "none":
            raise ValueError(
                "nProcessesPerPoint: more than one process per point needs a launcher "
                "(--launcher torchrun, horovodrun or dask)"
            )
        if self.steeringExec and self.optimizer not in (None, "external"):
            raise ValueError(
                f"optimizer: '{self.optimizer}' conflicts with steeringExec (which implies 'external'); give one"
            )
        if self.optimizer == "external" and not self.steeringExec:
            raise ValueError("steeringExec: the 'external' optimizer needs a steering command")
        if self.searchSpace is None and not self.steeringExec:
            raise ValueError("searchSpace: a built-in optimizer needs a search space (searchSpaceFile)")
        if self.segments is not None:
            if not self.segments:
                raise ValueError("segments: the segment list is empty")
            names = [s.name for s in self.segments]
            dup = sorted(n for n, k in Counter(names).items() if k > 1)  # O(S): specs hold 100s of segments
            if dup:
                raise ValueError(f"segments: duplicate segment names {dup}")
        if self.segments is not None:
            self.segment_training_files()  # a file or dataset not in trainingDS is a 422 at submit
        if self.directions is not None and not self.directions:
            raise ValueError("directions: give at least one of 'minimize'/'maximize'")
        self._check_pruner()
        # validate the spaces now, so a bad space is a 422 at submit
        self.segment_spaces()
        return self

    def _check_pruner(self) -> None:
        """The shape of the pruning options (the pruner itself is built at submit by the server)."""
        if self.objectiveNames is not None and len(self.objectiveNames) != self.n_objectives:
            raise ValueError(
                f"objectiveNames: {len(self.objectiveNames)} names for {self.n_objectives} objectives"
            )
        if self.pruner == "none":
            if self.prunerOptions:
                raise ValueError("prunerOptions: options given without a pruner (--pruner)")
            return
        if self.n_objectives > 1 and self.prunerObjective is None:
            raise ValueError(
                f"prunerObjective: a pruner on a task with {self.n_objectives} objectives needs the "
                "objective to prune on (an index or a name of objectiveNames)"
            )
        if self.prunerObjective is not None:
            self.pruner_objective_index  # noqa: B018 - raises for a bad one

    @property
    def pruner_objective_index(self) -> int:
        """The objective the pruner watches (0 for a single-objective task)."""
        o = self.prunerObjective
        if o is None:
            return 0
        if isinstance(o, int) or str(o).isdigit():
            if not 0 <= int(o) < self.n_objectives:
                raise ValueError(
                    f"prunerObjective: {o} is not an objective index (0..{self.n_objectives - 1})"
                )
            return int(o)
        names = self.objectiveNames or []
        if o not in names:
            raise ValueError(
                f"prunerObjective: '{o}' is not one of the objective names {names} (objectiveNames)"
            )
        return names.index(o)

    @property
    def pruner_direction(self) -> str:
        return (self.directions or ["minimize"])[self.pruner_objective_index]

    # --- derived values -------------------------------------------------------------

    @property
    def nodes(self) -> tuple[int, int]:
        """``nNodesPerPoint`` as (MIN, MAX): equal unless the point is elastic."""
        return parse_nodes(self.nNodesPerPoint)

    @property
    def optimizer_name(self) -> str:
        if self.steeringExec:
            return "external"
        return self.optimizer or DEFAULT_OPTIMIZER

    @property
    def min_unevaluated_points(self) -> int | None:
        """``minUnevaluatedPoints`` in effect: upstream's 0 for a steering command unless set (an
        iteration starts only when no point is waiting or running: the only value every
        upstream steering tool works with); ``None`` for built-in optimizers, whose default
        keeps every evaluation slot busy."""
        if self.minUnevaluatedPoints is None and self.steeringExec:
            return 0
        return self.minUnevaluatedPoints

    @property
    def total_max_points(self) -> int:
        """``%MAX_POINTS``: the whole task's point budget (panda-client multiplies ``maxPoints`` by
        the number of segments)."""
        return self.maxPoints * len(self.segment_names)

    @property
    def max_evaluation_jobs(self) -> int:
        return self.maxEvaluationJobs if self.maxEvaluationJobs is not None else 2 * self.maxPoints

    @property
    def checkpoint_interval_seconds(self) -> float:
        return parse_duration_minutes(self.checkPointInterval)

    @property
    def n_objectives(self) -> int:
        return len(self.directions) if self.directions else 1

    @property
    def segment_names(self) -> list[str]:
        return [s.name for s in self.segments] if self.segments else [""]

    def segment_training_files(self) -> list[list[str]]:
        """Each segment's training files, resolved against ``trainingFiles`` (the resolved
        ``--trainingDS``): a name in ``files`` is an entry of the dataset, its file name, or its
        path relative to the dataset; a name in ``datasets`` is a constituent dataset, i.e. a
        directory the entries lie in (or an entry itself). A name the dataset does not hold is an
        error naming it. Without ``--trainingDS`` the names are taken as they are (paths or URLs:
        a phpo extension). A segment with neither gets the whole dataset."""
        if not self.segments:
            return [list(self.trainingFiles)]
        out: list[list[str]] = []
        if not self.trainingFiles:
            for seg in self.segments:
                if seg.datasets:
                    raise ValueError(
                        f"segments: segment '{seg.name}' names datasets {seg.datasets} but the task "
                        "has no trainingDS to find them in"
                    )
                out.append(list(seg.files))
            return out
        entries = list(self.trainingFiles)
        by_name: dict[str, list[str]] = {}
        for e in entries:
            for key in _entry_names(e):
                by_name.setdefault(key, []).append(e)
        for seg in self.segments:
            if not seg.files and not seg.datasets:
                out.append(entries)
                continue
            got: list[str] = []
            for f in seg.files:
                hits = by_name.get(f.strip("/"), [])
                if not hits:
                    raise ValueError(
                        f"segments: segment '{seg.name}': file '{f}' is not in trainingDS ({_some(entries)})"
                    )
                if len(hits) > 1:
                    raise ValueError(
                        f"segments: segment '{seg.name}': file '{f}' matches {len(hits)} entries "
                        f"of trainingDS ({_some(hits)}); name it by a longer path"
                    )
                got.append(hits[0])
            for d in seg.datasets:
                hits = _in_dataset(entries, d)
                if not hits:
                    raise ValueError(
                        f"segments: segment '{seg.name}': dataset '{d}' is not a part of trainingDS "
                        f"({_some(entries)})"
                    )
                got.extend(hits)
            out.append(list(dict.fromkeys(got)))
        return out

    def segment_spaces(self) -> list[SearchSpace | None]:
        """The canonical space of each segment (``None`` when only external steering knows it)."""
        names = self.segment_names
        raw = self.searchSpace
        if raw is None:
            return [None] * len(names)
        try:
            if isinstance(raw, list):
                if not self.segments:
                    raise ValueError("searchSpace: a list of search spaces needs segments (segmentSpecFile)")
                if raw and not any(isinstance(x, dict) and "search_space" in x for x in raw):
                    # a plain list of spaces, one per segment in order (panda-client passes it on)
                    if len(raw) != len(names):
                        raise ValueError(
                            f"searchSpace: {len(raw)} search spaces for {len(names)} segments; "
                            "give one per segment, or one space for all"
                        )
                    return [parse_search_space(x) for x in raw]
                items = [SegmentSearchSpace.model_validate(x) for x in raw]
                by_id = {str(i.model_id): i.search_space for i in items}
                # model_id is the segment's 0-based position (upstream) or its name
                keys = [str(i) if str(i) in by_id else n for i, n in enumerate(names)]
                missing = [n for n, k in zip(names, keys) if k not in by_id]
                extra = sorted(set(by_id) - set(keys))
                if missing or extra:
                    raise ValueError(
                        "searchSpace: the model_ids of the search-space list do not match the segments"
                        + (f"; no space for segments {missing}" if missing else "")
                        + (f"; unknown model_ids {extra}" if extra else "")
                    )
                return [parse_search_space(by_id[k]) for k in keys]
            space = parse_search_space(raw)
            return [space] * len(names)
        except SearchSpaceError as e:
            raise ValueError(f"searchSpace: {e}") from None


def _path_of(entry: str) -> str:
    """An entry's path: a URL without its scheme and host, a path as it is."""
    if "://" in entry:
        rest = entry.split("://", 1)[1]
        return rest.split("/", 1)[1] if "/" in rest else ""
    return entry


def _entry_names(entry: str) -> list[str]:
    """The names a segment may give a training entry: the entry itself, and each trailing part
    of its path (``a/b/file.tar`` is ``file.tar``, ``b/file.tar``, ...)."""
    parts = [x for x in _path_of(entry).split("/") if x]
    names = {entry.strip("/")}
    names.update("/".join(parts[i:]) for i in range(len(parts)))
    return sorted(names)


def _in_dataset(entries: list[str], dataset: str) -> list[str]:
    """The entries that lie in the dataset (a directory of theirs, by name or by path)."""
    d = dataset.strip("/")
    hits = []
    for e in entries:
        parts = [x for x in _path_of(e).split("/") if x]
        dirs = parts[:-1]
        if e.strip("/") == d or any(
            "/".join(dirs[i:j]) == d for i in range(len(dirs)) for j in range(i + 1, len(dirs) + 1)
        ):
            hits.append(e)
    return hits


def _some(items: list[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... {len(items) - n} more" if len(items) > n else "") if items else "empty"


class TaskCounts(BaseModel):
    ready: int = 0
    leased: int = 0
    evaluated: int = 0
    failed: int = 0
    cancelled: int = 0
    pruned: int = 0  # stopped early by the task's pruner
    jobs: int = 0


class Task(BaseModel):
    """A task as the API returns it."""

    model_config = ConfigDict(extra="ignore")
    id: int
    name: str | None
    owner: str
    state: TaskState
    message: str | None = None
    spec: TaskSpec
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    counts: TaskCounts = Field(default_factory=TaskCounts)
    n_segments: int = 1
    best_loss: float | list[float] | None = None
    waiting_for: str | None = Field(
        default=None,
        description="why a running task makes no progress: the requirement (site, architecture, container "
        "runtime) that none of the agents seen lately meets; null when nothing is known to block it",
    )
