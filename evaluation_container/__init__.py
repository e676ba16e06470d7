"""phpo.evaluation_container: the agent that leases jobs from a phpo server and runs them.

- :mod:`.agent` the polling loop and the job runners (evaluation and steering jobs);
- :mod:`.runners` how a command is executed (a process group, or a Docker/podman container);
- :mod:`.checkpoints` saving and restoring ``checkPointToSave``/``checkPointToLoad``;
- :mod:`.sdk` what a Python payload imports to read its point and report its loss.

Imports only :mod:`phpo.schemas` and :mod:`phpo.client` (never the server).
"""
