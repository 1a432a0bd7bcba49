"""The Starlette app factory: wires settings, the database, the services and the routes."""
import contextlib
import logging

from sqlalchemy import text
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from schema.identity import TokenAuthority
from gateway.errors import ApiError
from gateway.openapi import openapi_document
from gateway.rest import agent as rest_agent
from gateway.rest import jobs as rest_jobs
from gateway.rest import storage as rest_storage
from gateway.services.agent import AgentService
from gateway.services.batcher import JobInserter
from gateway.services.jobs import JobService
from gateway.settings import Settings
from gateway.storage import ObjectStore
from schema.signals import Signal
from schema.db import make_engine, upgrade

log = logging.getLogger("prominence.gateway")


def _database_answers(engine) -> None:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


async def health(request: Request) -> Response:
    try:
        await run_in_threadpool(_database_answers, request.app.state.engine)
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


def build_provisioner(settings: Settings, engine, tokens: TokenAuthority, jobs_changed: Signal, assigned: Signal):
    from provisioner.service import LocalCloud, Provisioner, ProvisionerConfig, service_id

    cloud = LocalCloud.this_machine(settings.data_dir / "nodes", settings.local_cpus, settings.local_memory_mb)
    config = ProvisionerConfig(gateway_url=settings.public_url, cloud=cloud, service_id=service_id(settings.data_dir),
                               idle_timeout=settings.idle_timeout, heartbeat_timeout=settings.heartbeat_timeout)
    return Provisioner(engine, config, tokens, jobs_changed, assigned)


def create_app(settings: Settings) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        engine = make_engine(settings.database_url)
        upgrade(engine)
        inserter = JobInserter(engine)
        tokens = TokenAuthority(settings.secret)
        store = ObjectStore(settings.data_dir / "storage", settings.secret, settings.public_url)
        jobs_changed, assigned = Signal(), Signal()
        app.state.engine = engine
        app.state.tokens = tokens
        app.state.store = store
        app.state.jobs = JobService(engine, inserter, store, settings.data_dir, jobs_changed)
        app.state.agent = AgentService(engine, tokens, store, settings.data_dir, settings.public_url,
                                       jobs_changed, assigned)
        app.state.openapi = openapi_document()
        provisioner = (build_provisioner(settings, engine, tokens, jobs_changed, assigned)
                       if settings.run_provisioner else None)
        if provisioner:
            provisioner.start()
        try:
            yield
        finally:
            if provisioner:
                provisioner.stop()
            inserter.close()
            engine.dispose()

    v1 = [Route("/health", health, methods=["GET"]), Route("/openapi.json", openapi, methods=["GET"]),
          *rest_jobs.routes, *rest_storage.routes]
    return Starlette(
        routes=[Mount("/v1", routes=v1), Mount("/agent/v1", routes=rest_agent.routes)],
        lifespan=lifespan,
        exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: server_error},
    )
