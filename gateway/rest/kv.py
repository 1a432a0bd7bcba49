"""/v1/kv: the real PROMINENCE key-value store routes (reference 1.4 and 6), translated to
KvService calls. Bodies are raw (no Content-Type needed); keys are read from the raw request path,
so that bytes that are not UTF-8 are refused rather than silently replaced."""
from urllib.parse import unquote_to_bytes

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.errors import BadRequest
from gateway.rest.common import flag, identity, read_body
from gateway.services.kv import MAX_VALUE_BYTES, KvConflict, KvService, normalize_key


def _service(request: Request) -> KvService:
    return request.app.state.kv


def _key(request: Request) -> str:
    """The key as sent: the raw path after `/kv/`, percent-decoded as UTF-8 (strictly)."""
    key = request.path_params.get("key", "")
    path, raw = request.scope["path"], request.scope.get("raw_path")
    head = path[:len(path) - len(key)]  # ".../v1/kv/": what is in front of the key, as decoded
    if raw is None or not raw.startswith(head.encode()):
        return key
    try:
        return unquote_to_bytes(raw[len(head.encode()):]).decode()
    except UnicodeDecodeError:
        raise BadRequest("Invalid key: it must be UTF-8") from None


def _query_bytes(request: Request, name: str) -> bytes | None:
    """A query parameter's value as the bytes it percent-encodes (`+` is a space), or None."""
    for part in request.scope.get("query_string", b"").split(b"&"):
        field, _, value = part.partition(b"=")
        if unquote_to_bytes(field.replace(b"+", b" ")) == name.encode():
            return unquote_to_bytes(value.replace(b"+", b" "))
    return None


def _text(value: bytes) -> str:
    return value.decode(errors="replace")


async def get_key(request: Request) -> Response:
    who = await identity(request)
    key = _key(request)
    if flag(request, "list"):
        items = await _service(request).list(who, key, values=flag(request, "values"))
        if flag(request, "values"):
            return JSONResponse([{item.key: _text(item.value)} for item in items])
        return JSONResponse([item.key for item in items])
    item = await _service(request).get(who, key)
    try:
        item.value.decode()
    except UnicodeDecodeError:
        return Response(item.value, media_type="application/octet-stream")
    return Response(item.value, media_type="text/plain; charset=utf-8")


async def set_key(request: Request) -> Response:
    who = await identity(request)
    key = normalize_key(_key(request))  # a bad key is refused before the body is read
    try:
        value = await read_body(request, MAX_VALUE_BYTES)
    except BadRequest:  # over the limit: read_body stops reading there
        raise BadRequest("Content of value too large") from None
    try:
        await _service(request).set(who, key, value, _query_bytes(request, "prev"))
    except KvConflict as error:
        raise BadRequest(error.message) from None
    return JSONResponse({}, status_code=201)


async def delete_key(request: Request) -> Response:
    who = await identity(request)
    await _service(request).delete(who, _key(request), prefix=flag(request, "prefix"))
    return JSONResponse({})


routes = [
    Route("/kv", get_key, methods=["GET"]),
    Route("/kv", set_key, methods=["POST"]),
    Route("/kv", delete_key, methods=["DELETE"]),
    Route("/kv/{key:path}", get_key, methods=["GET"]),
    Route("/kv/{key:path}", set_key, methods=["POST"]),
    Route("/kv/{key:path}", delete_key, methods=["DELETE"]),
]
