"""Errors that reach users as `{"error": "..."}` with an HTTP status."""


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
