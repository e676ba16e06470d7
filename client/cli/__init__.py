"""The ``phpo`` command line: upstream-compatible submission, task commands, ``phpo up`` and
``phpo demo``. Entry point: :func:`phpo.client.cli.main.main`."""
