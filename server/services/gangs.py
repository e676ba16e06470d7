"""Gangs: one point trained by several agents together (``--nNodesPerPoint M`` or ``MIN:MAX``).

The broker leases such a point to a group of agents, all or none:

- the first agent that acquires it becomes node rank 0 (the *leader*): the point is leased to
  its job as usual, and the job's payload holds the gang (``{"gang": {"min", "max", "members",
  "endpoint", "formed", "deadline"}}``); ``endpoint`` is the ``rendezvous_endpoint`` the leader's
  acquire named (torchrun's c10d store runs there);
- the next agents that acquire (not already in it, able to run the task) join the forming gang:
  each gets a *member* job (payload ``{"gang_of": LEADER, "node_rank": K}``) for the same point
  (params and checkpoint), while the point itself stays leased to the leader's job only;
- the gang is formed when MIN agents are in; heartbeats tell the waiting agents
  (:class:`~phpo.schemas.jobs.GangInfo`), and they start torchrun together (static rendezvous,
  node ranks as given here, so global rank 0 is on the leader). An elastic gang (MIN < MAX)
  starts with MIN and takes further members up to MAX while it runs (torchrun's c10d
  rendezvous; the agents' launcher ranks the leader's node first, so global rank 0 and the
  result stay on the leader);
- a gang not formed within the task's ``gangTimeout`` dissolves: its jobs are cancelled and the
  point is ready again without spending an attempt (the slots go back to their agents);
- the leader reports the point's result; a member's ``complete`` only closes its own job. A
  member that fails or loses its lease fails the leader's attempt (the point is given back with
  an attempt spent and its checkpoint kept) and cancels the other members; the leader's failure
  cancels the members. In an elastic gang a member may go while MIN others stay: they train on.

Every state change goes through :mod:`phpo.server.orchestration` (``set_state``), inside the
broker's transaction.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from phpo.schemas.jobs import AcquireRequest, GangInfo, Job
from phpo.schemas.states import JobState, TaskState
from sqlalchemy.orm import Session

from ..auth.identity import Caller
from ..db.engine import utcnow
from ..db.tables import JobRow
from ..orchestration.transitions import set_state
from ..repositories import gangs as gang_repo
from ..repositories import jobs as repo

if TYPE_CHECKING:
    from .job_broker import JobBroker, SeenAgent, TaskInfo


def nodes(info: TaskInfo) -> tuple[int, int] | None:
    """(MIN, MAX) agents per point of a gang task; None for a task of one agent per point."""
    lo, hi = info.spec.nodes
    return (lo, hi) if hi > 1 else None


def _gang(job: JobRow) -> dict[str, Any] | None:
    return (job.payload or {}).get("gang")


def _member_of(job: JobRow) -> int | None:
    return (job.payload or {}).get("gang_of")


def _info(g: dict[str, Any], leader_id: int, node_rank: int) -> GangInfo:
    return GangInfo(
        size_min=g["min"],
        size_max=g["max"],
        node_rank=node_rank,
        leader_job_id=leader_id,
        endpoint=g["endpoint"],
        formed=g["formed"],
        members=len(g["members"]),
        message=g.get("ended"),
    )


class Gangs:
    """The broker's gang logic (called by :class:`~phpo.server.services.job_broker.JobBroker`)."""

    def __init__(self, broker: JobBroker):
        self.b = broker

    def _gang_tasks(self) -> list[int]:
        """Tasks of several agents per point this server has seen (from the broker's spec cache):
        an acquire for none of them costs no statement here."""
        with self.b._infos_lock:
            return [tid for tid, info in self.b._infos.items() if nodes(info) is not None]

    # ---------------------------------------------------------------- acquire

    @staticmethod
    def may_lead(info: TaskInfo, req: AcquireRequest) -> bool:
        """An agent that names no rendezvous endpoint cannot host a gang's rendezvous."""
        return nodes(info) is None or req.rendezvous_endpoint is not None

    def lead(self, s: Session, job: JobRow, req: AcquireRequest, info: TaskInfo, out: Job) -> Job:
        """The job just made for ``req`` is node rank 0 of a new gang when its task has several
        agents per point."""
        n = nodes(info)
        if n is None:
            return out
        assert req.rendezvous_endpoint is not None  # may_lead
        deadline = utcnow() + timedelta(seconds=info.spec.gangTimeout)
        g = {
            "min": n[0],
            "max": n[1],
            "endpoint": req.rendezvous_endpoint,
            "formed": n[0] <= 1,
            "deadline": deadline.isoformat(),
            "members": [{"job": job.id, "agent": req.agent, "rank": 0}],
        }
        job.payload = {"gang": g}
        return out.model_copy(update={"gang": _info(g, job.id, 0)})

    def join(self, caller: Caller, req: AcquireRequest) -> Job | None:
        """Join a forming gang (or an elastic one below MAX) this agent is not in yet."""
        tasks = self._gang_tasks()
        if not tasks:
            return None
        b = self.b

        def open_to(payload: dict[str, Any] | None) -> bool:
            g = (payload or {}).get("gang")
            return not (
                g is None
                or len(g["members"]) >= g["max"]
                or (g["formed"] and g["min"] == g["max"])
                or (not g["formed"] and utcnow() > datetime.fromisoformat(g["deadline"]))
                or req.agent in {m["agent"] for m in g["members"]}
            )

        # a read first: an agent with no gang to join costs no write transaction
        with b.db.read() as r:
            ids = [i for i, payload in gang_repo.running_job_payloads(r, task_ids=tasks) if open_to(payload)]
        if not ids:
            return None
        with b.db.write() as s:
            for leader in gang_repo.running_jobs(s, task_ids=tasks, ids=ids, skip_locked=b._pg):
                g = _gang(leader)
                if not open_to(leader.payload):
                    continue
                info = b.info(s, leader.task_id)
                if not info.can_evaluate(req.site, req.resources):
                    continue
                if repo.task_state(s, task_id=leader.task_id) != TaskState.running:
                    continue
                return self._add_member(s, caller, req, info, leader, g)
        return None

    def _add_member(
        self,
        s: Session,
        caller: Caller,
        req: AcquireRequest,
        info: TaskInfo,
        leader: JobRow,
        g: dict[str, Any],
    ) -> Job:
        b = self.b
        now = utcnow()
        rank = max(m["rank"] for m in g["members"]) + 1
        # the member lists the point too (so its agent may read the point's checkpoint); the point
        # stays leased to the leader's job, so nothing the member sends can change it
        member = JobRow(
            kind="evaluation",
            task_id=leader.task_id,
            segment_idx=leader.segment_idx,
            agent=req.agent,
            holder=caller.holder,
            site=req.site,
            state="running",
            lease_expires_at=b._lease_until(),
            point_ids=list(leader.point_ids or []),
            results={},
            created_at=now,
            started_at=now,
            payload={"gang_of": leader.id, "node_rank": rank},
        )
        s.add(member)
        s.flush()
        members = [*g["members"], {"job": member.id, "agent": req.agent, "rank": rank}]
        g = {**g, "members": members, "formed": g["formed"] or len(members) >= g["min"]}
        leader.payload = {**(leader.payload or {}), "gang": g}
        seg = repo.segment_name_files(s, task_id=leader.task_id, idx=leader.segment_idx)
        points = repo.job_points(s, ids=leader.point_ids or [])
        return b.evaluation_job(member, seg, points, info, runs=None, gang=_info(g, leader.id, rank))

    # ---------------------------------------------------------------- heartbeat and timeout

    def _leader(self, s: Session, job: JobRow) -> JobRow | None:
        """The leader of ``job``'s gang (``job`` itself for node rank 0); None outside a gang."""
        lid = _member_of(job)
        if lid is None:
            return job if _gang(job) is not None else None
        return repo.job_for_update(s, job_id=lid)

    def heartbeat(self, s: Session, job: JobRow) -> GangInfo | None:
        """What a gang job's heartbeat says of its gang; a forming gang past its deadline dissolves
        here (the answer then says ``message``, and the job is cancelled)."""
        if job.payload is None:
            return None
        leader = self._leader(s, job)
        g = _gang(leader) if leader is not None else None
        if g is None:
            return None
        if (
            leader.state == JobState.running
            and not g["formed"]
            and utcnow() > datetime.fromisoformat(g["deadline"])
        ):
            self._dissolve(s, leader, g)
            g = _gang(leader)
        return _info(g, leader.id, (job.payload or {}).get("node_rank", 0))

    def expire(self, s: Session) -> int:
        """The reaper's pass: dissolve forming gangs past their deadline (their agents may all
        be gone). Returns how many."""
        tasks = self._gang_tasks()
        if not tasks:
            return 0
        n = 0
        now = utcnow()
        for leader in gang_repo.running_jobs(s, task_ids=tasks, skip_locked=self.b._pg):
            g = _gang(leader)
            if g is not None and not g["formed"] and now > datetime.fromisoformat(g["deadline"]):
                self._dissolve(s, leader, g)
                n += 1
        return n

    def _dissolve(self, s: Session, leader: JobRow, g: dict[str, Any]) -> None:
        """A gang that did not form in time: every job cancelled, the point ready again with no
        attempt spent, the segment's job count given back."""
        b = self.b
        info = b.info(s, leader.task_id)
        why = (
            f"the point needs {g['min']} agents together (nNodesPerPoint) and only {len(g['members'])} joined "
            f"within gangTimeout ({info.spec.gangTimeout:g} s); the slots are given back"
        )
        leader.payload = {**(leader.payload or {}), "gang": {**g, "ended": why}}
        task = b._task(s, leader.task_id)
        for p in repo.leased_points_for_update(s, job=leader):
            b.results.give_back(p, task, info, error=why, spend=False)
        self._cancel_members(s, leader, g, why, keep=None)
        set_state(leader, JobState.cancelled, message=why)
        repo.uncount_job_in_segment(s, task_id=leader.task_id, idx=leader.segment_idx)

    @staticmethod
    def _cancel_members(s: Session, leader: JobRow, g: dict[str, Any], why: str, keep: int | None) -> None:
        ids = [m["job"] for m in g["members"] if m["rank"] > 0 and m["job"] != keep]
        if not ids:
            return
        for m in repo.running_jobs_for_update(s, ids=ids):
            set_state(m, JobState.cancelled, message=why)

    # ---------------------------------------------------------------- end of a gang job

    def ended(self, s: Session, job: JobRow, error: str) -> None:
        """``job`` failed or lost its lease (its state is written already). A member takes the
        leader's attempt down with it (unless the gang is elastic and keeps MIN members); the leader
        takes its members down."""
        if job.payload is None:
            return
        leader = self._leader(s, job)
        g = _gang(leader) if leader is not None else None
        if g is None:
            return
        if leader is job:
            self._cancel_members(
                s,
                leader,
                g,
                f"node rank 0 of the point's gang (job {job.id}) ended: {error}"[:2000],
                keep=None,
            )
            return
        rank = (job.payload or {}).get("node_rank", 0)
        left = [m for m in g["members"] if m["job"] != job.id]
        if g["min"] < g["max"] and len(left) >= g["min"] and leader.state == JobState.running:
            # elastic: the point trains on with the others (torchrun restarts them, smaller)
            leader.payload = {**(leader.payload or {}), "gang": {**g, "members": left}}
            return
        if leader.state != JobState.running:
            return
        why = f"node {rank} of the point's gang (job {job.id}, agent {job.agent!r}) ended: {error}"[:2000]
        set_state(leader, JobState.failed, message=why)
        self.b.results.release_job_points(s, leader, self.b._task(s, leader.task_id), error=why)
        self._cancel_members(s, leader, g, why, keep=job.id)

    # ---------------------------------------------------------------- why a task waits

    @staticmethod
    def unmet(info: TaskInfo, capable: list[SeenAgent]) -> list[str]:
        n = nodes(info)
        if n is None or len(capable) >= n[0]:
            return []
        return [
            f"its evaluations wait for a gang of {n[0]} agents (nNodesPerPoint {info.spec.nNodesPerPoint}): "
            f"only {len(capable)} agent(s) seen can take them"
        ]
