"""/v1/storage/<key>: downloads by signed URL, without a bearer token (the CLI's `download`)."""
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway.errors import ApiError, Forbidden
from gateway.rest.common import ascii_int


async def download(request: Request) -> Response:
    store = request.app.state.store
    key = request.path_params["key"]
    params = request.query_params
    if not store.check_signature(key, ascii_int(params.get("expires", "")), params.get("signature", "")):
        raise Forbidden("The link is invalid or has expired")
    chunks = store.get(key)
    if chunks is None:
        raise ApiError(404, "No such object")
    return StreamingResponse(chunks, media_type="application/octet-stream")


routes = [Route("/storage/{key:path}", download, methods=["GET"])]
