"""/agent/v1: the protocol node agents speak (node tokens only). Routes translate to AgentService."""
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.errors import BadRequest, Forbidden, Unauthorized
from gateway.rest.common import MAX_ID, integer, path_id, read_body
from schema.identity import InvalidToken

MAX_OUTPUT_CHUNK = 8 << 20
MAX_CLAIM_WAIT = 30.0
MAX_RUNNING = 10_000  # [job, attempt] pairs in one heartbeat: far more than a node runs
MAX_REASON = 4096


def _node_id(request: Request) -> int:
    try:
        who = request.app.state.tokens.verify(request.headers.get("authorization"))
    except InvalidToken:
        raise Unauthorized() from None
    if who.node_id is None:
        raise Forbidden("A node token is required")
    return who.node_id


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def _has_nul(value: Any) -> bool:
    """Whether a NUL character is in any string (key or value) of a parsed JSON document."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            pending += item.keys()
            pending += item.values()
        elif isinstance(item, list):
            pending += item
    return False


async def _json(request: Request) -> dict[str, Any]:
    try:
        # NaN and Infinity are not JSON: PostgreSQL could not store them, nor listings show them.
        body = json.loads(await read_body(request) or b"{}", parse_constant=_not_json)
    except (ValueError, RecursionError):
        raise BadRequest("The body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("The body must be a JSON object")
    if _has_nul(body):  # PostgreSQL stores no NUL characters, in text or JSON
        raise BadRequest("The body must not contain NUL characters")
    return body


def _is_id(value: Any) -> bool:
    return type(value) is int and 0 < value <= MAX_ID


def _running(body: dict[str, Any]) -> list[tuple[int, int]]:
    running = body.get("running", [])
    if (not isinstance(running, list) or len(running) > MAX_RUNNING
            or not all(isinstance(pair, list) and len(pair) == 2 and all(map(_is_id, pair)) for pair in running)):
        raise BadRequest(f"running must be a list of at most {MAX_RUNNING} [job id, attempt] pairs of "
                         f"integers from 1 to {MAX_ID}")
    return [(job, attempt) for job, attempt in running]


def _finish_report(body: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(body.get("status"), str):
        raise BadRequest("status is required, a string")
    if not isinstance(body.get("reason", ""), str) or len(body.get("reason", "")) > MAX_REASON:
        raise BadRequest(f"reason must be a string of at most {MAX_REASON} characters")
    if not isinstance(body.get("execution", {}), dict):
        raise BadRequest("execution must be a JSON object")
    if not isinstance(body.get("infrastructure", False), bool):
        raise BadRequest("infrastructure must be true or false")
    return body


def _attempt(request: Request) -> int:
    return integer(request, "attempt", default=0, minimum=1)


async def register(request: Request) -> Response:
    node = _node_id(request)
    return JSONResponse(await request.app.state.agent.register(node, await _json(request)))


async def heartbeat(request: Request) -> Response:
    node = _node_id(request)
    running = _running(await _json(request))
    return JSONResponse(await request.app.state.agent.heartbeat(node, running))


async def claim(request: Request) -> Response:
    node = _node_id(request)
    wait = min(float(integer(request, "wait", default=20, minimum=0)), MAX_CLAIM_WAIT)
    return JSONResponse({"jobs": await request.app.state.agent.claim(node, wait, request.is_disconnected)})


async def output(request: Request) -> Response:
    node = _node_id(request)
    stream = request.path_params["stream"]
    if stream not in ("stdout", "stderr"):
        raise BadRequest("stream must be stdout or stderr")
    accepted = await request.app.state.agent.append_output(
        node, path_id(request), _attempt(request), stream, integer(request, "offset", 0, 0),
        await read_body(request, MAX_OUTPUT_CHUNK))
    return JSONResponse({"accepted": accepted})


async def upload(request: Request) -> Response:
    node = _node_id(request)
    name = request.query_params.get("name")
    if not name:
        raise BadRequest("name is required")
    accepted = await request.app.state.agent.store_output(node, path_id(request), _attempt(request), name,
                                                          request.stream())
    return JSONResponse({"accepted": accepted})


async def finish(request: Request) -> Response:
    node = _node_id(request)
    report = _finish_report(await _json(request))
    accepted = await request.app.state.agent.finish(node, path_id(request), _attempt(request), report)
    return JSONResponse({"accepted": accepted})


routes = [
    Route("/register", register, methods=["POST"]),
    Route("/heartbeat", heartbeat, methods=["POST"]),
    Route("/claim", claim, methods=["POST"]),
    Route("/jobs/{job_id:int}/finish", finish, methods=["POST"]),
    Route("/jobs/{job_id:int}/outputs", upload, methods=["PUT"]),
    Route("/jobs/{job_id:int}/{stream}", output, methods=["POST"]),
]
