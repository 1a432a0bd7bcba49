"""/v1/data: the caller's uploaded objects (reference 1.3 and 5; docs/api-decisions.md, Data)."""
import json
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.errors import BadRequest
from gateway.rest.common import identity, read_body
from gateway.services.data import ObjectNotFound

MAX_UPLOAD_REQUEST = 64 * 1024  # the JSON of POST /v1/data/upload: a name and a checksum


async def list_own(request: Request) -> Response:
    who = await identity(request)
    return JSONResponse([item.view() for item in await request.app.state.data.list(who)])


async def list_path(request: Request) -> Response:
    who = await identity(request)
    listed = await request.app.state.data.list_path(who, request.path_params["path"])
    return JSONResponse([item.view() for item in listed])


async def upload(request: Request) -> Response:
    """`{"filename": name, "checksum": sha256 hex or null}` (or `?name=&checksum=`) -> 201 `{"url"}`."""
    who = await identity(request)
    body = await read_body(request, MAX_UPLOAD_REQUEST)
    params = dict(parse_qsl(request.url.query, keep_blank_values=True))
    document = {}
    if body.strip():
        try:
            document = json.loads(body)
        except ValueError:
            raise BadRequest("The request body must be JSON: {\"filename\": ..., \"checksum\": ...}") from None
        if not isinstance(document, dict):
            raise BadRequest("The request body must be a JSON object: {\"filename\": ..., \"checksum\": ...}")
        unknown = set(document) - {"filename", "checksum"}
        if unknown:
            raise BadRequest(f"Unknown key(s) in the request: {', '.join(sorted(unknown))}")
    name = document.get("filename", params.get("name"))
    checksum = document.get("checksum", params.get("checksum"))
    made = await request.app.state.data.upload_url(who, name, checksum)
    return JSONResponse({"url": made.url}, status_code=201)


async def delete(request: Request) -> Response:
    who = await identity(request)
    try:
        await request.app.state.data.delete(who, request.path_params["path"])
    except ObjectNotFound as error:  # not a 404: the CLI reads every 404 as a wrong PROMINENCE_URL
        raise BadRequest(error.message) from None
    return Response(status_code=204)


routes = [
    Route("/data", list_own, methods=["GET"]),
    Route("/data", upload, methods=["POST"]),
    Route("/data/upload", upload, methods=["POST"]),
    Route("/data/{path:path}", list_path, methods=["GET"]),
    Route("/data/{path:path}", delete, methods=["DELETE"]),
]
