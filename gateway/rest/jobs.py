"""/v1/jobs: the routes of the real PROMINENCE jobs API, translated to JobService calls; the jobs' REST
shape (`job_view`) lives here, not in the service."""
import json
from collections.abc import Iterable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.errors import BadRequest
from gateway.rest.common import (events, flag, id_list, identity, integer, listing_filters,
                                 path_id, read_body, unknown_is_a_bad_request)
from gateway.services.jobs import JobQuery, job_outputs, parse_spec
from gateway.storage import ObjectStore
from schema.enums import JobStatus
from schema.jobspec import redact_storage, redact_tasks

_DETAIL_KEYS = ("resources", "policies", "notifications", "artifacts", "labels", "inputs")
_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def encode_list(items: Iterable[Any]) -> bytes:
    """A JSON list, encoded one item at a time. Encoding a whole big listing is one long C call
    that holds the GIL; item by item, the event loop gets its turns in between."""
    return b"[" + b",".join(_JSON.encode(item).encode() for item in items) + b"]"


def job_view(row: Any, detail: bool, store: ObjectStore) -> dict[str, Any]:
    """A job as `/v1` shows it: the list view, or with `detail` everything the reference lists."""
    spec = row.spec
    view: dict[str, Any] = {"id": row.id, "name": row.name, "status": row.status,
                            "tasks": redact_tasks(spec["tasks"]), "events": events(row)}
    if row.status_reason:
        view["statusReason"] = row.status_reason
    if row.parameters:  # a workflow factory's instance (reference 2.1)
        view["parameters"] = row.parameters
    if not detail:
        return view
    view.update((key, spec[key]) for key in _DETAIL_KEYS if key in spec)
    if "storage" in spec:
        view["storage"] = redact_storage(spec["storage"])
    outputs = job_outputs(spec, row.execution, store)
    for key, is_dir in (("outputFiles", False), ("outputDirs", True)):
        if key in spec:
            view[key] = [{"name": o.name, "url": o.url, "size": o.size} if o.url else {"name": o.name, "url": ""}
                         for o in outputs if o.is_dir == is_dir]
    execution = {k: v for k, v in row.execution.items() if k != "outputs"}
    execution.setdefault("runtimeVersion", {})
    view["execution"] = execution
    return view


def _status(status: str) -> JobStatus:
    try:
        return JobStatus(status)
    except ValueError:
        raise BadRequest(f"invalid status specified: {status} (one of {', '.join(JobStatus)})") from None


def _query(request: Request) -> JobQuery:
    query = listing_filters(request, JobQuery(workflow=flag(request, "workflow")), _status)
    if query.workflow and query.ids is None:
        raise BadRequest("workflow=true needs the workflow's id in id")
    return query


async def list_jobs(request: Request) -> Response:
    who = await identity(request)
    query, store = _query(request), request.app.state.store
    body = await request.app.state.jobs.list(who, query, lambda rows: encode_list(
        job_view(row, query.detail, store) for row in rows))
    return Response(body, media_type="application/json")


async def create_job(request: Request) -> Response:
    who = await identity(request)
    spec = parse_spec(await read_body(request))  # a bad field: InvalidInput, a 400 naming it
    return JSONResponse({"id": await request.app.state.jobs.submit(who, spec)}, status_code=201)


async def get_job(request: Request) -> Response:
    who = await identity(request)
    return JSONResponse([job_view(await request.app.state.jobs.get(who, path_id(request)), True,
                                  request.app.state.store)])


async def delete_jobs(request: Request) -> Response:
    who = await identity(request)
    if "job_id" in request.path_params:
        ids = [path_id(request)]
    elif (raw := request.query_params.get("id")) is not None:
        ids = id_list(raw)
    else:
        raise BadRequest("a job id or list of job ids must be provided")
    await request.app.state.jobs.delete(who, ids)
    return JSONResponse({})


async def clone_job(request: Request) -> Response:
    who = await identity(request)
    return JSONResponse({"id": await request.app.state.jobs.clone(who, path_id(request))}, status_code=201)


async def remove_job(request: Request) -> Response:
    who = await identity(request)
    with unknown_is_a_bad_request():
        await request.app.state.jobs.remove(who, path_id(request))
    return JSONResponse({})


async def job_output(request: Request) -> Response:
    who = await identity(request)
    stream = request.url.path.rsplit("/", 1)[1]
    with unknown_is_a_bad_request():
        pieces = await request.app.state.jobs.read_output(
            who, path_id(request), stream, node=integer(request, "node", 0, 0), offset=integer(request, "offset", 0, 0))
    return StreamingResponse(pieces, media_type="text/plain; charset=utf-8")


routes = [
    Route("/jobs", list_jobs, methods=["GET"]),
    Route("/jobs", create_job, methods=["POST"]),
    Route("/jobs", delete_jobs, methods=["DELETE"]),
    Route("/jobs/{job_id:int}", get_job, methods=["GET"]),
    Route("/jobs/{job_id:int}", delete_jobs, methods=["DELETE"]),
    Route("/jobs/{job_id:int}/clone", clone_job, methods=["PUT"]),
    Route("/jobs/{job_id:int}/remove", remove_job, methods=["PUT"]),
    Route("/jobs/{job_id:int}/stdout", job_output, methods=["GET"]),
    Route("/jobs/{job_id:int}/stderr", job_output, methods=["GET"]),
]
