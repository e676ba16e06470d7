"""Task specs as the HPO manager reads them: parsed once per task (a spec never changes after
submit), and the optimizer configuration of each segment."""

from __future__ import annotations

from phpo.schemas.tasks import TaskSpec
from phpo.steering.base import OptimizerConfig
from sqlalchemy.orm import Session

from ...repositories import tasks as task_repo


def optimizer_config(spec: TaskSpec, seg_idx: int) -> OptimizerConfig:
    space = spec.segment_spaces()[seg_idx]
    options = dict(spec.optimizerOptions)
    seed = options.pop("seed", None)
    return OptimizerConfig(
        space=space, directions=list(spec.directions or ["minimize"]), seed=seed, options=options
    )


def validate_optimizer(spec: TaskSpec) -> None:
    """Build (and drop) the optimizer of each segment: a bad name or option is refused at submit."""
    if spec.optimizer_name == "external":
        return
    from phpo.steering.registry import create_optimizer

    seen: set[int] = set()
    for i, space in enumerate(spec.segment_spaces()):
        if id(space) not in seen:  # one space cloned over the segments is checked once
            seen.add(id(space))
            create_optimizer(spec.optimizer_name, optimizer_config(spec, i))


class TaskSpecs:
    """The parsed spec of each running task (a cache: specs never change, so each is decoded
    and validated once)."""

    def __init__(self) -> None:
        self._specs: dict[int, TaskSpec] = {}

    def __contains__(self, task_id: int) -> bool:
        return task_id in self._specs

    def parse(self, task_id: int, raw: dict) -> TaskSpec:
        spec = self._specs.get(task_id)
        if spec is None:
            spec = self._specs[task_id] = TaskSpec.model_validate(raw)
        return spec

    def get(self, s: Session, task_id: int) -> TaskSpec:
        """The task's spec, read in ``s`` when not known yet."""
        spec = self._specs.get(task_id)
        if spec is None:
            spec = self.parse(task_id, task_repo.task_spec(s, task_id=task_id))
        return spec

    def __getitem__(self, task_id: int) -> TaskSpec:
        return self._specs[task_id]

    def forget_except(self, running: set[int]) -> None:
        for tid in [t for t in list(self._specs) if t not in running]:
            del self._specs[tid]
