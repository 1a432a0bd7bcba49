"""Domain errors of the service layer: each transport maps them (REST to the seed's status codes,
the CLI to one line on stderr, GraphQL to error codes)."""


class DomainError(Exception):
    code = "INTERNAL"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidInput(DomainError):
    code = "BAD_USER_INPUT"


class NotFound(DomainError):
    code = "NOT_FOUND"


class Conflict(DomainError):
    code = "CONFLICT"
