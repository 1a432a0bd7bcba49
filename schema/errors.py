"""Domain errors of the service layer. Each transport maps them in one place: REST to the seed's
status codes (gateway/errors.py `status_of`, with the routes that the seed answers otherwise
saying so), the CLI to one line on stderr, GraphQL to the `code` in an error's extensions."""


class DomainError(Exception):
    code = "INTERNAL"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    @property
    def extensions(self) -> dict[str, str]:
        """What a GraphQL error raised from this one carries (graphql-core copies it)."""
        return {"code": self.code}


class Unauthenticated(DomainError):
    """No valid token: missing, expired, of the wrong kind, or of a job attempt that is over."""

    code = "UNAUTHENTICATED"

    def __init__(self, message: str = "Authentication failure"):
        super().__init__(message)


class InvalidInput(DomainError):
    """The request itself is wrong (a field breaks a rule)."""

    code = "BAD_USER_INPUT"


class InvalidState(DomainError):
    """Not possible in the thing's current state (a finished job cannot be deleted...)."""

    code = "INVALID_STATE"


class NotFound(DomainError):
    code = "NOT_FOUND"


class JobNotFound(NotFound):
    """A job named by the caller does not exist (some seed routes answer this with a 400)."""


class Forbidden(DomainError):
    """It exists, and the caller may not touch it."""

    code = "FORBIDDEN"


class Conflict(DomainError):
    code = "CONFLICT"
