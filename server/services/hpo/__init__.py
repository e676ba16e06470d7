"""The HPO manager: keeps every running task's pipeline full and ends tasks when their budget
is spent.

One background thread (:class:`HpoManager`, ``manager.py``) makes a *pass* every
``manager_interval`` seconds over every running task, and in between a *partial pass* at once
when woken: a result names its (task, segment), and only the segments named since the last pass
are read, so a result costs O(1) segments, not O(S) (with 300 segments a full pass per result
made server CPU per evaluation grow with S); submit, resume and the reaper ask for a full pass.
A pass reads, for each segment it covers, how many points are ready/leased/evaluated/failed, and
(``planning.py``):

- refills: for a built-in optimizer by default when ``ready + leased < nParallelEvaluation``
  (asking for the deficit, at most ``nPointsPerIteration``); with ``minUnevaluatedPoints`` m,
  upstream's meaning: a new iteration starts when ``ready + leased <= m``, asking
  ``nPointsPerIteration``. A steering command keeps upstream's default m = 0 (an iteration
  waits for the slowest point: tools that subtract the pending points need it). Never beyond
  ``maxPoints`` generated.
- finishes a segment when ``maxPoints`` points are evaluated or failed, when
  ``maxEvaluationJobs`` jobs were used (once its running jobs ended; its ready points are
  cancelled), or when the optimizer returned no points (search exhausted) (``finishing.py``);
- finishes the task when all its segments have finished;
- fails the task after ``steering_retries`` (3) failed steering iterations in a row, keeping
  the last error in the task's message (``records.py``).

The parts: ``leader.py`` (one manager among replicas), ``specs.py`` (parsed specs, optimizer
configuration), ``planning.py``, ``finishing.py``, ``records.py`` (points and iterations
stored), ``iterations.py`` (built-in optimizers: ask/tell in a thread pool), ``external.py``
(steering jobs for ``steeringExec``). Their SQL is in ``server/repositories/``.
"""

from .external import ExternalSteering
from .leader import MANAGER_LOCK_KEY, LeaderLock
from .manager import AgentWaker, HpoManager
from .records import EXHAUSTED, STEERING_EMPTY
from .specs import optimizer_config, validate_optimizer

__all__ = [
    "EXHAUSTED",
    "MANAGER_LOCK_KEY",
    "STEERING_EMPTY",
    "AgentWaker",
    "ExternalSteering",
    "HpoManager",
    "LeaderLock",
    "optimizer_config",
    "validate_optimizer",
]
