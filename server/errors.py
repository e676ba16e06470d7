"""Errors the services raise; the API turns each into an :class:`~phpo.schemas.api.ErrorBody`."""

from __future__ import annotations


class ApiError(Exception):
    status = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        code: str | None = None,
        details: list[dict] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = details
        if code:
            self.code = code


class InvalidInput(ApiError):
    status = 422
    code = "validation_error"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class LeaseLost(Conflict):
    code = "lease_lost"


class TooLarge(ApiError):
    status = 413
    code = "too_large"
