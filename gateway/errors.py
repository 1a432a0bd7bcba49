"""Errors that reach users as `{"error": "..."}` with an HTTP status."""
from schema import errors as domain

# The services' domain errors (schema/errors.py) as /v1 answers them, unless a route says otherwise.
_STATUS = {domain.Unauthenticated: 401, domain.InvalidInput: 400, domain.InvalidState: 400, domain.NotFound: 404, domain.Forbidden: 403,
           domain.Conflict: 409}


def status_of(error: domain.DomainError) -> int:
    return next((status for kind, status in _STATUS.items() if isinstance(error, kind)), 500)


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class BadRequest(ApiError):
    def __init__(self, message: str):
        super().__init__(400, message)


class Unauthorized(ApiError):
    def __init__(self, message: str = "Authentication failure"):
        super().__init__(401, message)


class Forbidden(ApiError):
    def __init__(self, message: str):
        super().__init__(403, message)


class NotFound(ApiError):
    def __init__(self, message: str):
        super().__init__(404, message)


class RequestTimeout(ApiError):
    """The client sent its request too slowly; the connection is closed after the answer."""

    def __init__(self, message: str):
        super().__init__(408, message, {"Connection": "close"})
