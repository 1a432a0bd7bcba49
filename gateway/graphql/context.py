"""What resolvers need from the request: who calls, the app's services (gateway/app.py), and the
request's DataLoaders."""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any

import strawberry
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.dataloader import DataLoader

from schema.errors import Forbidden
from schema.identity import Identity


class GraphQLApp(GraphQL):
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


async def caller(info: strawberry.Info) -> Identity:
    request = info.context["request"]
    return await request.app.state.auth.user(request.headers.get("authorization"))


async def admin(info: strawberry.Info) -> Identity:
    """The caller, who must be an admin (the same rule as the admin commands)."""
    who = await caller(info)
    if not who.admin:
        raise Forbidden("Only admins may do this")
    return who
