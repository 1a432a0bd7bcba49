"""What every /v1 route needs: the caller's identity, bounded bodies, typed query parameters."""
from starlette.requests import Request

from schema.identity import Identity, InvalidToken
from gateway.errors import BadRequest, Unauthorized
from schema.jobspec import MAX_BODY_BYTES

MAX_ID = 2**63 - 1
_FALSE = frozenset({"false", "0", "no", "off"})


def identity(request: Request) -> Identity:
    """The user (or job, acting as its user) behind the request's bearer token."""
    try:
        who = request.app.state.tokens.verify(request.headers.get("authorization"))
    except InvalidToken:
        raise Unauthorized() from None
    if who.node_id is not None:  # node tokens are for the agent protocol only
        raise Unauthorized()
    return who


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    too_large = BadRequest(f"Request body is larger than the limit of {limit} bytes (1 MiB)")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def flag(request: Request, name: str) -> bool:
    """A flag parameter: present means on (as the real server reads them), unless it says false."""
    value = request.query_params.get(name)
    return value is not None and value.lower() not in _FALSE


def integer(request: Request, name: str, default: int, minimum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer") from None
    if not minimum <= value <= MAX_ID:
        raise BadRequest(f"{name} must be an integer of at least {minimum}")
    return value


def id_list(raw: str, name: str = "id") -> list[int]:
    try:
        ids = [int(part) for part in raw.split(",") if part.strip()]
    except ValueError:
        raise BadRequest(f"{name} must be a comma-separated list of integer ids") from None
    if not ids or any(not 0 < i <= MAX_ID for i in ids):
        raise BadRequest(f"{name} must be a comma-separated list of positive integer ids")
    return ids


def path_id(request: Request, name: str = "job_id") -> int:
    value = request.path_params[name]
    if not 0 < value <= MAX_ID:
        raise BadRequest(f"{value} is not a valid id")
    return value
