"""/agent/v1: the protocol node agents speak (node tokens only). Routes translate to AgentService."""
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.errors import BadRequest, Forbidden, Unauthorized
from gateway.rest.common import integer, path_id, read_body
from schema.identity import InvalidToken

MAX_OUTPUT_CHUNK = 8 << 20
MAX_CLAIM_WAIT = 30.0


def _node_id(request: Request) -> int:
    try:
        who = request.app.state.tokens.verify(request.headers.get("authorization"))
    except InvalidToken:
        raise Unauthorized() from None
    if who.node_id is None:
        raise Forbidden("A node token is required")
    return who.node_id


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await read_body(request) or b"{}")
    except ValueError:
        raise BadRequest("The body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("The body must be a JSON object")
    return body


def _attempt(request: Request) -> int:
    return integer(request, "attempt", default=0, minimum=1)


async def register(request: Request) -> Response:
    node = _node_id(request)
    return JSONResponse(await request.app.state.agent.register(node, await _json(request)))


async def heartbeat(request: Request) -> Response:
    node = _node_id(request)
    body = await _json(request)
    try:
        running = [(int(job), int(attempt)) for job, attempt in body.get("running", [])]
    except (TypeError, ValueError):
        raise BadRequest("running must be a list of [job id, attempt] pairs") from None
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
    chunks = [chunk async for chunk in request.stream()]
    accepted = await request.app.state.agent.store_output(node, path_id(request), _attempt(request), name, chunks)
    return JSONResponse({"accepted": accepted})


async def finish(request: Request) -> Response:
    node = _node_id(request)
    report = await _json(request)
    if "status" not in report:
        raise BadRequest("status is required")
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
