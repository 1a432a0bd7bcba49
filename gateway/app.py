"""The Starlette app factory: wires settings, the database, the services and the routes."""
import contextlib
import logging

from sqlalchemy import text
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from schema.identity import TokenAuthority
from gateway.errors import ApiError
from gateway.openapi import openapi_document
from gateway.rest import jobs as rest_jobs
from gateway.services.batcher import JobInserter
from gateway.services.jobs import JobService
from gateway.settings import Settings
from schema.db import make_engine, upgrade

log = logging.getLogger("prominence.gateway")


async def health(request: Request) -> Response:
    try:
        with request.app.state.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception:
        log.exception("health check failed")
        return JSONResponse({"errors": "DATABASE"}, status_code=409)
    return Response(status_code=204)


async def openapi(request: Request) -> Response:
    return JSONResponse(request.app.state.openapi)


async def api_error(request: Request, error: ApiError) -> Response:
    return JSONResponse({"error": error.message}, status_code=error.status)


async def http_error(request: Request, error: HTTPException) -> Response:
    return JSONResponse({"error": error.detail}, status_code=error.status_code, headers=error.headers)


async def server_error(request: Request, error: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return JSONResponse({"error": "Internal server error"}, status_code=500)


def create_app(settings: Settings) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        engine = make_engine(settings.database_url)
        upgrade(engine)
        inserter = JobInserter(engine)
        app.state.engine = engine
        app.state.tokens = TokenAuthority(settings.secret)
        app.state.jobs = JobService(engine, inserter, settings.data_dir)
        app.state.openapi = openapi_document()
        try:
            yield
        finally:
            inserter.close()
            engine.dispose()

    v1 = [Route("/health", health, methods=["GET"]), Route("/openapi.json", openapi, methods=["GET"]),
          *rest_jobs.routes]
    return Starlette(
        routes=[Mount("/v1", routes=v1)],
        lifespan=lifespan,
        exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: server_error},
    )
