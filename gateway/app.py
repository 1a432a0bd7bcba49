"""The Starlette app factory: wires settings, the database, the services and the routes; and the
HTTP protocol uvicorn serves it with."""
import contextlib
import gc
import logging
import sys

from anyio import CapacityLimiter, to_thread
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Mount, Route, WebSocketRoute
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from schema.errors import DomainError
from schema.identity import TokenAuthority
from gateway.auth import Authenticator
from gateway.errors import ApiError, status_of
from gateway.graphql.context import GraphQLApp
from gateway.graphql.schema import schema as graphql_schema
from gateway.openapi import openapi_document
from gateway.rest import agent as rest_agent
from gateway.rest import jobs as rest_jobs
from gateway.rest import workflows as rest_workflows
from gateway.rest import kv as rest_kv
from gateway.rest import resources as rest_resources
from gateway.rest import storage as rest_storage
from gateway.rest import data as rest_data
from gateway.services.data import DataService, open_store
from gateway.services.accounting import AccountingService
from gateway.services.agent import AgentService
from gateway.services.batcher import JobInserter
from gateway.services.clouds import CloudService
from gateway.services.jobs import JobService
from gateway.services.workflows import WorkflowService
from gateway.services.notify import Notifier, NotifyConfig
from gateway.services.kv import KvService
from gateway.services.watch import Watch
from gateway.settings import Settings
from schema.credentials import CredentialBox
from schema.signals import Signal
from schema.db import make_engine, reading, upgrade

log = logging.getLogger("prominence.gateway")


def _database_answers(engine) -> None:
    with reading(engine) as connection:  # on SQLite, no write lock: it never queues behind a writer
        connection.execute(text("SELECT 1"))


async def health(request: Request) -> Response:
    try:
        # Its own thread: a health check never waits behind other requests for a worker thread.
        await to_thread.run_sync(_database_answers, request.app.state.engine, limiter=request.app.state.health_threads)
    except Exception:
        log.exception("health check failed")
        return JSONResponse({"errors": "DATABASE"}, status_code=409)
    return Response(status_code=204)


async def openapi(request: Request) -> Response:
    return JSONResponse(request.app.state.openapi)


async def api_error(request: Request, error: ApiError) -> Response:
    return JSONResponse({"error": error.message}, status_code=error.status, headers=error.headers)


async def domain_error(request: Request, error: DomainError) -> Response:
    return JSONResponse({"error": error.message}, status_code=status_of(error))


async def http_error(request: Request, error: HTTPException) -> Response:
    return JSONResponse({"error": error.detail}, status_code=error.status_code, headers=error.headers)


async def server_error(request: Request, error: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return JSONResponse({"error": "Internal server error"}, status_code=500)


def build_provisioner(settings: Settings, engine, tokens: TokenAuthority, box: CredentialBox, jobs_changed: Signal,
                      assigned: Signal):
    from provisioner.service import Provisioner, ProvisionerConfig, service_id

    CloudService(engine, box).ensure_local(settings.data_dir / "nodes", settings.local_cpus,
                                           settings.local_memory_mb, settings.idle_timeout)
    config = ProvisionerConfig(gateway_url=settings.public_url, service_id=service_id(settings.data_dir),
                               heartbeat_timeout=settings.heartbeat_timeout,
                               agent_gateway_timeout=settings.agent_gateway_timeout,
                               reconcile_interval=settings.reconcile_interval,
                               agent_ca_pem=settings.agent_ca_pem)
    return Provisioner(engine, config, tokens, box, jobs_changed, assigned)


def create_app(settings: Settings) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        engine = make_engine(settings.database_url)
        upgrade(engine)
        inserter = JobInserter(engine)
        tokens = TokenAuthority(settings.secret)
        jobs_changed, assigned = Signal(), Signal()
        box = CredentialBox.for_data_dir(settings.data_dir)
        # Local files in the data dir, or an S3 bucket (settings.storage_url); docs/api-decisions.md "Data".
        store = await to_thread.run_sync(open_store, settings, engine, box)
        app.state.engine = engine
        app.state.tokens = tokens
        app.state.store = store
        # E-mails and webhooks when jobs finish: its own task, woken by jobs_changed (notify.py).
        app.state.notifier = Notifier(engine, NotifyConfig.of(settings), jobs_changed)
        app.state.jobs = JobService(engine, inserter, settings.data_dir, jobs_changed, app.state.notifier)
        app.state.auth = Authenticator(tokens, app.state.jobs)
        app.state.workflows = WorkflowService(engine, inserter, app.state.jobs, jobs_changed)
        app.state.clouds = CloudService(engine, box)
        app.state.accounting = AccountingService(engine, app.state.clouds)
        app.state.kv = KvService(engine)
        app.state.data = DataService(engine, store, settings.data_dir, settings.max_upload_bytes)
        app.state.agent = AgentService(engine, tokens, store, settings.data_dir, settings.public_url,
                                       jobs_changed, assigned)
        # GraphQL subscriptions' changes: the signals only wake it early (the provisioner may run apart).
        app.state.watch = Watch(engine, app.state.jobs, app.state.clouds, settings.data_dir, (jobs_changed, assigned))
        app.state.watch.start()
        app.state.notifier.start()
        app.state.openapi = openapi_document()
        app.state.health_threads = CapacityLimiter(1)
        # Threads that wait on I/O (the event loop, database calls) get the GIL back within 1 ms
        # instead of 5 while listings keep other threads busy: a health check takes a dozen turns.
        sys.setswitchinterval(0.001)
        app.state.client_timeout = settings.client_timeout
        provisioner = (build_provisioner(settings, engine, tokens, box, jobs_changed, assigned)
                       if settings.run_provisioner else None)
        if provisioner:
            provisioner.start()
        # What startup made (modules, the schema, the database engine) lives as long as the
        # process: the garbage collector no longer scans it, so the collections that big answers
        # trigger (a page of 500 jobs makes tens of thousands of objects) cost a fraction.
        gc.freeze()
        try:
            yield
        finally:
            await app.state.watch.stop()
            await app.state.notifier.stop()
            if provisioner:
                provisioner.stop()
            inserter.close()
            engine.dispose()

    v1 = [Route("/health", health, methods=["GET"]), Route("/openapi.json", openapi, methods=["GET"]),
          *rest_jobs.routes, *rest_workflows.routes, *rest_resources.routes, *rest_storage.routes,
          *rest_data.routes, *rest_kv.routes]
    # Subscriptions' websockets from other origins: only the origins CORS allows (strawberry refuses
    # a cross-origin handshake otherwise).
    # Subscriptions speak graphql-transport-ws only: the older graphql-ws protocol is neither
    # needed by current clients nor tested here.
    graphql = GraphQLApp(graphql_schema, graphql_ide="graphiql", allowed_origins=settings.cors_origins,
                         subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,))
    # Browsers' cross-origin calls (a frontend on another origin) only from the configured origins;
    # tokens travel in the Authorization header, never in cookies, so no credentials mode.
    cors = [Middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST", "PUT",
            "DELETE"], allow_headers=["Authorization", "Content-Type"], max_age=600)] if settings.cors_origins else []
    return Starlette(
        middleware=cors,
        routes=[Mount("/v1", routes=v1), Mount("/agent/v1", routes=rest_agent.routes),
                Route("/graphql", graphql, methods=["GET", "POST"]), WebSocketRoute("/graphql", graphql)],
        lifespan=lifespan,
        exception_handlers={ApiError: api_error, DomainError: domain_error, HTTPException: http_error,
                            Exception: server_error},
    )


class TimedHttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol, plus a deadline for each request's line and headers. uvicorn has
    none: a client that sends its headers a byte at a time, or nothing at all after connecting,
    would keep its connection (and its buffers) for as long as it likes. The deadline runs from
    the connection (for its first request) or from the first byte of a later request on it; a
    client that misses it gets a 408 and the connection is closed. Bodies are timed by read_body."""

    header_timeout = 20.0
    _head_timer = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._start_head_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:
            self._start_head_timer()

    def on_headers_complete(self) -> None:
        self._stop_head_timer()
        super().on_headers_complete()

    def connection_lost(self, exc) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _start_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a pipelined request stalled behind an answer still being sent
            return
        body = f'{{"error": "The request headers were not received within {self.header_timeout:g} seconds"}}'.encode()
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        self.transport.close()


def http_protocol(client_timeout: float) -> type[TimedHttpProtocol]:
    """The protocol class to give uvicorn (`http=`), with the server's client timeout."""
    return type("TimedHttpProtocol", (TimedHttpProtocol,), {"header_timeout": client_timeout})
