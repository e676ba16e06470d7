"""A point trained by several agents (``nNodesPerPoint``): each agent's node of it holds its slot
until the gang has its minimum number of agents, as the heartbeats say."""

from __future__ import annotations

import logging
import threading

from phpo.client.agent_api import AgentAPI
from phpo.client.errors import Conflict, NotFound
from phpo.schemas.jobs import GangInfo, HeartbeatRequest, Job

from .job_end import JobEnded, JobFailed
from .supervision import JobSignals

log = logging.getLogger("phpo.agent")


class GangWait:
    def __init__(
        self,
        api: AgentAPI,
        agent_name: str,
        retry_seconds: float,
        signals: JobSignals,
        hard_stop: threading.Event,
    ):
        self.api = api
        self.agent_name = agent_name
        self.retry_seconds = retry_seconds
        self.signals = signals
        self.hard_stop = hard_stop

    def wait(self, job: Job) -> Job:
        """``job`` with its formed gang; raises :class:`JobEnded` when its point must not start:
        the gang dissolved, the task ended, the lease is gone, the agent stops."""
        gang = job.gang
        assert gang is not None
        if not gang.formed:
            log.info(
                "job %d: node %d of a point for %d agent(s); waiting for the others",
                job.id,
                gang.node_rank,
                gang.size_min,
            )
        while not gang.formed:
            gang = self._beat(job.id, gang)
            if not gang.formed:
                self.signals.cancelled.wait(0.5)
        return job.model_copy(update={"gang": gang})

    def _beat(self, job_id: int, gang: GangInfo) -> GangInfo:
        if self.hard_stop.is_set():
            raise JobFailed(f"agent {self.agent_name} is shutting down", retry=True)
        try:
            resp = self.api.heartbeat(job_id, HeartbeatRequest(), retry_seconds=self.retry_seconds)
        except (Conflict, NotFound) as e:
            log.warning("job %d: the point's gang ended before it formed: %s", job_id, e)
            raise JobEnded() from e
        if resp.gang is not None:
            gang = resp.gang
        if resp.cancel:
            if gang.message:  # dissolved: the server closed the job
                log.warning("job %d: %s", job_id, gang.message)
                raise JobEnded()
            raise JobFailed("cancelled by the server", retry=True)
        return gang
