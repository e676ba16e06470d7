"""phpo.server: the FastAPI service, its database, the job broker and the HPO manager.

Nothing is created at import time: :func:`phpo.server.app.create_app` builds an app from a
:class:`phpo.server.settings.Settings`, so tests can run several servers with other settings.
"""
