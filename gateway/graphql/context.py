"""What resolvers need from the request: who calls, the app's services (gateway/app.py), and the
request's DataLoaders."""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any

import strawberry
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.dataloader import DataLoader
from strawberry.permission import BasePermission

from gateway.errors import ApiError
from gateway.rest.common import read_body
from schema.errors import Forbidden
from schema.jobspec import MAX_BODY_BYTES
from schema.identity import Identity

# A request carries a query and its variables: createJob's input may be as big as a /v1 job.
MAX_REQUEST_BYTES = 2 * MAX_BODY_BYTES


class GraphQLApp(GraphQL):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """HTTP requests' bodies are read as /v1 reads them (a size limit, a deadline) before
        strawberry parses them, which would otherwise take any size at any pace."""
        if scope["type"] != "http":
            return await super().__call__(scope, receive, send)
        try:
            body = await read_body(Request(scope, receive), MAX_REQUEST_BYTES)
        except ApiError as error:
            code = "REQUEST_TOO_SLOW" if error.status == 408 else "BAD_REQUEST"
            answer = JSONResponse({"errors": [{"message": error.message, "extensions": {"code": code}}]},
                                  status_code=error.status, headers=error.headers)
            return await answer(scope, receive, send)

        async def replay() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}
        await super().__call__(scope, replay, send)

    async def get_context(self, request: Request | WebSocket, response: Response | WebSocket) -> dict[str, Any]:
        # Each request (or subscription) gets its own loaders: nothing cached outlives it.
        return {"request": request, "response": response, "loaders": {}}


def services(info: strawberry.Info) -> Any:
    """The app's state: `jobs`, `clouds`, `tokens`, `store`... as gateway/app.py wires them."""
    return info.context["request"].app.state


def loader(info: strawberry.Info, name: str,
           load: Callable[[Sequence[Hashable]], Awaitable[Sequence[Any]]]) -> DataLoader:
    """The request's DataLoader called `name` (made with `load` on first use)."""
    loaders = info.context["loaders"]
    if name not in loaders:
        loaders[name] = DataLoader(load_fn=load)
    return loaders[name]


def authorization(info: strawberry.Info) -> str | None:
    """The caller's `Authorization` value: a subscription's from its connection_init payload
    (`{"Authorization": "Bearer ..."}`: browsers cannot set a websocket's headers), else the
    request's (or websocket's) header."""
    for key, value in (info.context.get("connection_params") or {}).items():
        if key.lower() == "authorization" and isinstance(value, str):
            return value
    return info.context["request"].headers.get("authorization")


async def caller(info: strawberry.Info) -> Identity:
    return await services(info).auth.user(authorization(info))


async def admin(info: strawberry.Info) -> Identity:
    """The caller, who must be an admin (the same rule as the admin commands)."""
    who = await caller(info)
    if not who.admin:
        raise Forbidden("Only admins may do this")
    return who


class AdminOnly(BasePermission):
    """On a field only admins may read or call (DESIGN.md 3.7): anyone else gets a FORBIDDEN
    error for it (and null there, on a nullable field), as `admin()` answers."""

    message = "Only admins may do this"
    error_extensions = {"code": Forbidden.code}

    async def has_permission(self, source: Any, info: strawberry.Info, **kwargs: Any) -> bool:
        return (await caller(info)).admin
