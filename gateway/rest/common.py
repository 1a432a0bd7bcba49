"""What every /v1 route needs: the caller's identity, bounded bodies, typed query parameters."""
import asyncio
import re
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any, TypeVar

from starlette.requests import Request

from schema.identity import Identity
from gateway.errors import BadRequest, RequestTimeout
from gateway.services.jobs import ListingQuery
from schema.errors import JobNotFound, NotFound
from schema.jobspec import MAX_BODY_BYTES

MAX_ID = 2**63 - 1  # ids, offsets and attempts fit a BIGINT
# ASCII digits only: int() also takes other scripts' digits ('١٢'), '1_000' and blanks, and
# str.isdigit() takes '²', which int() then refuses.
_INTEGER = re.compile(r"-?[0-9]{1,19}")
_FALSE = frozenset({"false", "0", "no", "off"})


def ascii_int(raw: str) -> int | None:
    """The integer `raw` spells in ASCII digits (at most 19 of them), else None."""
    return int(raw) if _INTEGER.fullmatch(raw) else None


async def identity(request: Request) -> Identity:
    """The user (or job, acting as its user) behind the request's bearer token (gateway/auth.py)."""
    return await request.app.state.auth.user(request.headers.get("authorization"))


def body_timeout(request: Request, size: int) -> float:
    """How long a body of up to `size` bytes may take: the client timeout for each MiB."""
    return request.app.state.client_timeout * max(1.0, size / (1 << 20))


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The whole body, at most `limit` bytes, received within the server's client timeout for each
    MiB it may have (so a client that trickles its body cannot hold a request open for long)."""
    too_large = BadRequest(f"Request body is larger than the limit of {limit} bytes ({limit / (1 << 20):g} MiB)")
    length = ascii_int(request.headers.get("content-length", ""))
    if length is not None and length > limit:
        raise too_large
    timeout = body_timeout(request, limit)
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):  # uvicorn runs asyncio; anyio's fail_after costs twice as much
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise too_large
    except TimeoutError:
        raise RequestTimeout(f"The request body was not received within {timeout:g} seconds") from None
    return bytes(body)


Query = TypeVar("Query", bound=ListingQuery)


def listing_filters(request: Request, query: Query, status: Callable[[str], str]) -> Query:
    """The filters of a listing (reference section 2.3) from the request's parameters, into
    `query`; `status` turns the status parameter into a status, or raises BadRequest."""
    params = request.query_params
    query.completed, query.all = flag(request, "completed"), flag(request, "all")
    query.detail, query.name = flag(request, "detail"), params.get("name")
    if query.completed:
        query.num = integer(request, "num", default=1, minimum=-1)
    if (value := params.get("status")) is not None:
        query.status = status(value)
    for constraint in params.getlist("constraint"):
        key, sep, value = constraint.partition("=")
        if not sep or not key or "=" in value:
            raise BadRequest(f"Invalid constraint: {constraint} (expected key=value)")
        query.constraints.append((key, value))
    if (ids := params.get("id")) is not None:
        query.ids = id_list(ids)
    return query


def events(row: Any) -> dict[str, int]:
    """A job's or workflow's `events` as /v1 shows them: the times it has."""
    shown = {"createTime": row.create_time}
    if row.start_time is not None:
        shown["startTime"] = row.start_time
    if row.end_time is not None:
        shown["endTime"] = row.end_time
    return shown


def flag(request: Request, name: str) -> bool:
    """A flag parameter: present means on (as the real server reads them), unless it says false."""
    value = request.query_params.get(name)
    return value is not None and value.lower() not in _FALSE


def integer(request: Request, name: str, default: int, minimum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    value = ascii_int(raw.strip())
    if value is None:
        raise BadRequest(f"{name} must be an integer")
    if not minimum <= value <= MAX_ID:
        raise BadRequest(f"{name} must be an integer of at least {minimum} and at most {MAX_ID}")
    return value


def id_list(raw: str, name: str = "id") -> list[int]:
    ids = [ascii_int(part.strip()) for part in raw.split(",") if part.strip()]
    if not ids or any(i is None or not 0 < i <= MAX_ID for i in ids):
        raise BadRequest(f"{name} must be a comma-separated list of positive integer ids")
    return ids


def path_id(request: Request, name: str = "job_id") -> int:
    value = request.path_params[name]
    if not 0 < value <= MAX_ID:
        raise BadRequest(f"{value} is not a valid id")
    return value


@contextmanager
def unknown_is_a_bad_request(kind: type[NotFound] = JobNotFound):
    """Where the seed or the real server answers an unknown job (remove, stdout/stderr) or
    workflow with a 400 instead of a 404: the CLI reads a 404 as a wrong URL."""
    try:
        yield
    except kind as error:
        raise BadRequest(error.message) from None
