"""Errors that reach users as `{"error": "..."}` with an HTTP status."""


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


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
