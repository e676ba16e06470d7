"""One exception hierarchy for everything the client and the agent see from the server."""

from __future__ import annotations


class PhpoError(Exception):
    """Base of every phpo client error."""


class ConfigError(PhpoError):
    """No server URL/token configured, or an unreadable config file."""


class ServerUnreachable(PhpoError):
    """The server did not answer (connection refused, DNS, timeout)."""


class APIError(PhpoError):
    """The server answered with an error body: ``code``, ``message`` and maybe ``field``."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None, details=None):
        super().__init__(message)
        self.status, self.code, self.message, self.field, self.details = status, code, message, field, details

    def __str__(self) -> str:
        return f"{self.message} [{self.code}, HTTP {self.status}]"


class AuthError(APIError):
    """401/403: a missing, wrong or under-privileged token."""


class NotFound(APIError):
    """404: no such object, or not yours."""


class InvalidInput(APIError):
    """400/413/422: the request was refused; ``field`` names what to fix."""


class Conflict(APIError):
    """409: e.g. an illegal state change, or a lost lease."""


def error_for(status: int) -> type[APIError]:
    if status in (401, 403):
        return AuthError
    if status == 404:
        return NotFound
    if status == 409:
        return Conflict
    if status in (400, 413, 415, 422):
        return InvalidInput
    return APIError
