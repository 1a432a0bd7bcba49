"""/v1/jobs: the routes of the real PROMINENCE jobs API, translated to JobService calls."""
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.errors import BadRequest
from gateway.rest.common import flag, id_list, identity, integer, path_id, read_body
from gateway.services.jobs import JobQuery
from schema.enums import JobStatus
from schema.jobspec import JobSpec, describe_errors


def _query(request: Request) -> JobQuery:
    params = request.query_params
    for text in ("name", "constraint"):  # compared in SQL, where PostgreSQL refuses NUL characters
        if any("\x00" in value for value in params.getlist(text)):
            raise BadRequest(f"{text} must not contain NUL characters")
    query = JobQuery(completed=flag(request, "completed"), all=flag(request, "all"),
                     detail=flag(request, "detail"), workflow=flag(request, "workflow"),
                     name=params.get("name"))
    if query.completed:
        query.num = integer(request, "num", default=1, minimum=-1)
    if (status := params.get("status")) is not None:
        try:
            query.status = JobStatus(status)
        except ValueError:
            raise BadRequest(f"invalid status specified: {status} (one of {', '.join(JobStatus)})") from None
    for constraint in params.getlist("constraint"):
        key, sep, value = constraint.partition("=")
        if not sep or not key or "=" in value:
            raise BadRequest(f"Invalid constraint: {constraint} (expected key=value)")
        query.constraints.append((key, value))
    if (ids := params.get("id")) is not None:
        query.ids = id_list(ids)
    elif query.workflow:
        raise BadRequest("workflow=true needs the workflow's id in id")
    return query


async def list_jobs(request: Request) -> Response:
    who = await identity(request)
    return Response(await request.app.state.jobs.list(who, _query(request)), media_type="application/json")


async def create_job(request: Request) -> Response:
    who = await identity(request)
    try:
        spec = JobSpec.model_validate_json(await read_body(request))
    except ValidationError as error:
        raise BadRequest(describe_errors(error)) from None
    return JSONResponse({"id": await request.app.state.jobs.submit(who, spec)}, status_code=201)


async def get_job(request: Request) -> Response:
    who = await identity(request)
    return JSONResponse([await request.app.state.jobs.get(who, path_id(request))])


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
    await request.app.state.jobs.remove(who, path_id(request))
    return JSONResponse({})


async def job_output(request: Request) -> Response:
    who = await identity(request)
    stream = request.url.path.rsplit("/", 1)[1]
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
