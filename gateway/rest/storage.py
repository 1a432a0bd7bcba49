"""/v1/storage/<key>: downloads (the CLI's `download`) and uploads (its `upload`) by signed URL, without a
bearer token."""
import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.errors import ApiError, BadRequest, Forbidden, RequestTimeout
from gateway.rest.common import ascii_int, body_timeout
from gateway.storage import StorageError


async def download(request: Request) -> Response:
    store = request.app.state.store
    key = request.path_params["key"]
    params = request.query_params
    if not store.check_signature(key, ascii_int(params.get("expires", "")), params.get("signature", "")):
        raise Forbidden("The link is invalid or has expired")
    try:
        chunks = store.get(key)
    except StorageError:  # a link on its way, or not a file: as good as missing
        chunks = None
    if chunks is None:
        raise ApiError(404, "No such object")
    return StreamingResponse(chunks, media_type="application/octet-stream")


async def upload(request: Request) -> Response:
    """The PUT of a signed upload URL (POST /v1/data/upload): no bearer token, the signature is
    the permission. The body is checked (size, sha256) before it replaces anything."""
    data = request.app.state.data
    key = request.path_params["key"]
    fields = data.upload_fields(key, dict(request.query_params))
    if fields is None:
        raise Forbidden("The link is invalid or has expired")
    length = ascii_int(request.headers.get("content-length", ""))
    if length is not None and length > data.max_object_bytes:
        raise BadRequest(f"The object is larger than the limit of {data.max_object_bytes} bytes")
    timeout = body_timeout(request, length or data.max_object_bytes)
    try:
        async with asyncio.timeout(timeout):
            stored = await data.receive(key, fields, request.stream())
    except TimeoutError:
        raise RequestTimeout(f"The upload was not received within {timeout:g} seconds") from None
    return JSONResponse(stored.view(), status_code=201)


routes = [Route("/storage/{key:path}", download, methods=["GET"]),
          Route("/storage/{key:path}", upload, methods=["PUT"])]
