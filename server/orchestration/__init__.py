"""See the package docstring of phpo.server."""
