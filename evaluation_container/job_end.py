"""How a layer of the job runner ends a job early: it raises, and the thread that runs the job
(:class:`~.job_runner.JobRunner`) tells the server, once, in one place."""

from __future__ import annotations


class JobEnded(Exception):
    """The job is over and there is nothing more to tell the server (it ended the job itself,
    or the layer that raised has already told it)."""


class JobFailed(JobEnded):
    """The job fails: ``fail(error, retry)`` goes to the server."""

    def __init__(self, error: str, retry: bool):
        super().__init__(error)
        self.error = error
        self.retry = retry
