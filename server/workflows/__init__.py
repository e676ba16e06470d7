"""Workflows (DAGs of HPO tasks, jobs, sub-workflows, loops and served models): the engine
(:mod:`.engine`, the background loop that advances them), the checks of a definition at submit
(:mod:`.validation`) and the ``${{ ... }}`` expressions (:mod:`.expressions`). Their SQL is in
:mod:`phpo.server.repositories.workflows`; their state writes go through
:mod:`phpo.server.orchestration`."""
