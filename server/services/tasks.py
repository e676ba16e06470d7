"""Task lifecycle operations a user asks for: submit, cancel, pause, resume.

The HPO manager drives the rest (points, segment budgets, finishing); every state change goes
through :func:`~phpo.server.orchestration.transitions.set_state`.
"""

from __future__ import annotations

from collections.abc import Callable

from phpo.schemas.states import TaskState
from phpo.schemas.tasks import Task, TaskSpec
from phpo.steering.pruners import PrunerError, make_pruner
from sqlalchemy.orm import Session

from ..auth.identity import Caller
from ..db.engine import Database, utcnow
from ..db.tables import ArtifactRow, SegmentRow, TaskRow
from ..errors import InvalidInput
from ..orchestration.transitions import set_state
from ..repositories.tasks import get_task_row, task_to_schema
from .resource_requirements import ArchitectureError, parse_architecture
from .hpo import validate_optimizer


def insert_task(s: Session, owner: str, spec: TaskSpec) -> TaskRow:
    """A task row with its segments, in state running, inside the caller's transaction (the
    workflow engine stores a node and its task together). The HPO manager generates the first
    points; nothing waits on "submitted"."""
    now = utcnow()
    row = TaskRow(
        name=spec.outDS,
        owner=owner,
        state="submitted",
        spec=spec.model_dump(mode="json", warnings=False),
        optimizer=spec.optimizer_name,
        n_segments=len(spec.segment_names),
        failed_iterations=0,
        created_at=now,
        updated_at=now,
    )
    s.add(row)
    s.flush()
    # each segment's own training files, resolved against trainingDS ([]: the whole dataset)
    files = [[]]
    if spec.segments:
        files = [
            f if (seg.files or seg.datasets) else []
            for seg, f in zip(spec.segments, spec.segment_training_files(), strict=True)
        ]
    for idx, name in enumerate(spec.segment_names):
        s.add(
            SegmentRow(
                task_id=row.id,
                idx=idx,
                name=name,
                files=files[idx],
                finished=False,
                n_generated=0,
                n_jobs=0,
                created_at=now,
            )
        )
    set_state(row, TaskState.running)
    s.flush()
    return row


class TaskService:
    def __init__(self, db: Database, wake: Callable[[], None] = lambda: None):
        self.db = db
        self.wake = wake

    def create(self, caller: Caller, spec: TaskSpec) -> Task:
        try:
            parse_architecture(spec.architecture)
        except ArchitectureError as e:
            raise InvalidInput(f"architecture: {e}", field="architecture") from None
        check_optimizer(spec)
        with self.db.write() as s:
            if spec.sandbox is not None:
                self._check_sandbox(s, caller, spec.sandbox)
            row = insert_task(s, caller.name, spec)
            out = task_to_schema(s, row)
        self.wake()
        return out

    @staticmethod
    def _check_sandbox(s, caller: Caller, sandbox: str) -> None:
        try:
            art_id = int(sandbox)
        except ValueError:
            raise InvalidInput(
                f"sandbox: {sandbox!r} is not an artifact id (PUT /sandboxes returns one)", field="sandbox"
            ) from None
        art = s.get(ArtifactRow, art_id)
        if art is None or art.kind != "sandbox" or not caller.can_see(art.owner):
            raise InvalidInput(
                f"sandbox: no sandbox artifact {art_id} of yours (upload it with PUT /sandboxes)",
                field="sandbox",
            )

    def cancel(self, caller: Caller, task_id: int) -> Task:
        """Ready points are cancelled at once; running jobs learn it from their next heartbeat
        (``cancel: true``) and their points are cancelled when the job ends."""
        with self.db.write() as s:
            row = get_task_row(s, task_id, caller, lock=True)
            set_state(row, TaskState.cancelled, message=f"cancelled by {caller.name}")  # CancelOpenWork runs
            out = task_to_schema(s, row)
        self.wake()
        return out

    def pause(self, caller: Caller, task_id: int) -> Task:
        with self.db.write() as s:
            row = get_task_row(s, task_id, caller, lock=True)
            set_state(row, TaskState.paused, message=f"paused by {caller.name}")
            return task_to_schema(s, row)

    def resume(self, caller: Caller, task_id: int) -> Task:
        with self.db.write() as s:
            row = get_task_row(s, task_id, caller, lock=True)
            set_state(row, TaskState.running, message=f"resumed by {caller.name}")
            out = task_to_schema(s, row)
        self.wake()
        return out


def check_optimizer(spec: TaskSpec) -> None:
    """Build each segment's optimizer once, and the pruner, so an unknown name or a bad option
    is a 422 at submit rather than a failed task later."""
    try:
        make_pruner(spec.pruner, spec.prunerOptions)
    except PrunerError as e:
        raise InvalidInput(str(e), field=e.field) from None
    try:
        validate_optimizer(spec)
    except (ValueError, TypeError) as e:
        msg = str(e)
        if msg.startswith("directions"):
            field = "directions"
        elif "optimizer" in msg.split(":")[0] or msg.startswith("unknown optimizer"):
            field = "optimizer"
        else:
            field = "optimizerOptions"
        raise InvalidInput(f"{field}: {msg}" if not msg.startswith(field) else msg, field=field) from None
