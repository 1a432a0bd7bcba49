"""/v1/resources and /v1/accounting: the CLI's `resources` and `usage` commands, translated to
AccountingService calls (docs/api-decisions.md, "Resources and accounting")."""
from anyio import to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.errors import BadRequest
from gateway.rest.common import flag, identity
from gateway.services.accounting import parse_date


async def resources(request: Request) -> Response:
    await identity(request)
    found = await to_thread.run_sync(request.app.state.accounting.resources)
    return JSONResponse(found.to_dict())


async def accounting(request: Request) -> Response:
    who = await identity(request)
    params = request.query_params
    start, end = params.get("start") or None, params.get("end") or None
    if start is None:
        raise BadRequest("Start date must be provided")
    if end is None:
        raise BadRequest("End date must be provided")
    start_date, end_date = parse_date("start", start), parse_date("end", end)
    usage = await to_thread.run_sync(request.app.state.accounting.usage, who, start_date, end_date,
                                     flag(request, "show_all_users"), flag(request, "by_group"))
    return JSONResponse(usage.to_dict())


routes = [
    Route("/resources", resources, methods=["GET"]),
    Route("/accounting", accounting, methods=["GET"]),
]
