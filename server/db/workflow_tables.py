"""Table models of DAG workflows, on the same ``Base`` as :mod:`.tables` (so one metadata, one
migration history). Migration: ``0002_workflows``.

Every node *instance* is a row: a loop's body nodes get new rows for each iteration (so every
iteration's results stay visible), and a ``for_each`` node gets one row per item under its own
row. The engine keeps no state in memory: all it needs to continue after a restart is here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from phpo.schemas.states import TERMINAL_NODE_STATES, TERMINAL_WORKFLOW_STATES
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from .tables import PK, Base

_ID = BigInteger().with_variant(Integer, "sqlite")


class _Stamps:
    """Timestamps that belong to a state, stamped by ``set_state`` through :meth:`stamp_state`."""

    TERMINAL = frozenset()

    def stamp_state(self, target: str, now: datetime, message: str | None) -> None:
        self.updated_at = now
        if message is not None:
            self.message = message
        if target == "running" and hasattr(self, "started_at"):
            self.started_at = now
        if target in self.TERMINAL:
            self.finished_at = now


class WorkflowRow(_Stamps, Base):
    __tablename__ = "workflows"
    __table_args__ = (Index("ix_workflows_owner_parent", "owner", "parent_node_id"),)
    STATE_KIND = "workflow"
    TERMINAL = TERMINAL_WORKFLOW_STATES

    id: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    owner: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16), index=True)
    message: Mapped[str | None] = mapped_column(Text)
    definition: Mapped[dict[str, Any]] = mapped_column(JSON, doc="the validated WorkflowSpec")
    params: Mapped[dict[str, Any]] = mapped_column(JSON, doc="defaults with the submit's overrides")
    outputs: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    parent_node_id: Mapped[int | None] = mapped_column(_ID, doc="the workflow node running this sub-workflow")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WorkflowNodeRow(_Stamps, Base):
    __tablename__ = "workflow_nodes"
    __table_args__ = (
        UniqueConstraint("workflow_id", "path", name="uq_workflow_nodes_path"),
        Index("ix_workflow_nodes_workflow_state", "workflow_id", "state"),
        Index("ix_workflow_nodes_task", "task_id"),
    )
    STATE_KIND = "node"
    TERMINAL = TERMINAL_NODE_STATES

    id: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    workflow_id: Mapped[int] = mapped_column(ForeignKey("workflows.id", ondelete="CASCADE"))
    parent_id: Mapped[int | None] = mapped_column(
        _ID, doc="the loop (body nodes) or fan-out node (instances)"
    )
    name: Mapped[str] = mapped_column(String(100))
    path: Mapped[str] = mapped_column(
        String(1000), doc="unique in the workflow, e.g. rounds#2.search, train[1]"
    )
    kind: Mapped[str] = mapped_column(String(16))
    fan_out: Mapped[bool] = mapped_column(
        Boolean, default=False, doc="a for_each node (its instances below it)"
    )
    iteration: Mapped[int] = mapped_column(
        Integer, default=0, doc="body nodes: their loop iteration (1-based); loops: iterations started"
    )
    item_index: Mapped[int | None] = mapped_column(Integer)
    item: Mapped[Any] = mapped_column(JSON, nullable=True)
    state: Mapped[str] = mapped_column(String(16))
    message: Mapped[str | None] = mapped_column(Text)
    task_id: Mapped[int | None] = mapped_column(_ID)
    child_workflow_id: Mapped[int | None] = mapped_column(_ID)
    inputs: Mapped[dict[str, Any] | None] = mapped_column(
        JSON, nullable=True, doc="what was launched, resolved"
    )
    results: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
