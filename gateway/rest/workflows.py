"""/v1/workflows: the routes of the real PROMINENCE workflows API (reference sections 1.2 and 4),
translated to WorkflowService calls; the workflows' REST shape (`workflow_view`) lives here."""
from collections.abc import Iterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.errors import BadRequest
from gateway.rest.common import (ascii_int, events, id_list, identity, integer, listing_filters,
                                 path_id, read_body, unknown_is_a_bad_request)
from gateway.rest.jobs import encode_list
from gateway.services.jobs import ListingQuery
from gateway.services.workflows import WorkflowNotFound, WorkflowRecord, status_value
from schema.jobspec import redact_storage, redact_tasks

_SPEC_KEYS = ("name", "labels", "jobs", "dependencies", "factories", "policies", "notifications")


def _redacted_job(job: dict[str, Any]) -> dict[str, Any]:
    job = {**job, "tasks": redact_tasks(job["tasks"])}
    if "storage" in job:
        job["storage"] = redact_storage(job["storage"])
    return job


def workflow_view(record: WorkflowRecord, detail: bool) -> dict[str, Any]:
    """A workflow as `/v1` shows it (reference 4.3); with detail, its whole description too."""
    row = record.row
    view: dict[str, Any] = {"name": row.name, "id": row.id, "status": row.status}
    if row.status_reason:
        view["statusReason"] = row.status_reason
    view["events"] = events(row)
    view["progress"] = record.progress
    if detail:
        spec = row.spec
        described = {key: spec[key] for key in _SPEC_KEYS if key in spec}
        described["jobs"] = [_redacted_job(job) for job in spec["jobs"]]
        view = {**described, **view}
    return view


async def list_workflows(request: Request) -> Response:
    who = await identity(request)
    query = listing_filters(request, ListingQuery(), status_value)
    records = await request.app.state.workflows.list(who, query)
    return Response(encode_list(workflow_view(r, query.detail) for r in records), media_type="application/json")


async def create_workflow(request: Request) -> Response:
    who = await identity(request)
    service = request.app.state.workflows
    spec = service.parse(await read_body(request))  # a bad field: InvalidInput, a 400 naming it
    return JSONResponse({"id": await service.submit(who, spec)}, status_code=201)


async def get_workflow(request: Request) -> Response:
    who = await identity(request)
    record = await request.app.state.workflows.get(who, path_id(request, "workflow_id"))
    return JSONResponse([workflow_view(record, True)] if record else [])


async def delete_workflows(request: Request) -> Response:
    who = await identity(request)
    if "workflow_id" in request.path_params:
        ids = [path_id(request, "workflow_id")]
    elif (raw := request.query_params.get("id")) is not None:
        ids = id_list(raw)
    else:
        raise BadRequest("a workflow id or list of workflow ids must be provided")
    with unknown_is_a_bad_request(WorkflowNotFound):
        await request.app.state.workflows.delete(who, ids)
    return JSONResponse({})


async def rerun_workflow(request: Request) -> Response:
    who = await identity(request)
    with unknown_is_a_bad_request(WorkflowNotFound):
        new_id = await request.app.state.workflows.rerun(who, path_id(request, "workflow_id"))
    return JSONResponse({"id": new_id})  # 200, not 201: as the real server and the CLI expect


async def clone_workflow(request: Request) -> Response:
    who = await identity(request)
    with unknown_is_a_bad_request(WorkflowNotFound):
        new_id = await request.app.state.workflows.clone(who, path_id(request, "workflow_id"))
    return JSONResponse({"id": new_id}, status_code=201)


async def remove_workflow(request: Request) -> Response:
    who = await identity(request)
    with unknown_is_a_bad_request(WorkflowNotFound):
        await request.app.state.workflows.remove(who, path_id(request, "workflow_id"))
    return JSONResponse({})


def _job_and_node(request: Request) -> tuple[str, int]:
    """The job's name and the node. The CLI's `stderr <wf> <job>` swaps them (reference 4.4):
    a numeric job segment with a non-numeric `node` is read the right way round."""
    job = request.path_params["job"]
    node = request.query_params.get("node")
    if ascii_int(job) is not None and node is not None and ascii_int(node.strip()) is None:
        return node, 0
    return job, integer(request, "node", 0, 0)


async def workflow_job_output(request: Request) -> Response:
    who = await identity(request)
    stream = request.url.path.rsplit("/", 1)[1]
    job, node = _job_and_node(request)
    instance = request.path_params.get("instance")
    if instance is not None and not 0 <= instance < 2**31:
        raise BadRequest(f"{instance} is not a valid instance")
    with unknown_is_a_bad_request(WorkflowNotFound):
        pieces = await request.app.state.workflows.read_output(
            who, path_id(request, "workflow_id"), job, instance, stream, node, integer(request, "offset", 0, 0))
    return StreamingResponse(pieces, media_type="text/plain; charset=utf-8")


def _routes() -> Iterator[Route]:
    yield Route("/workflows", list_workflows, methods=["GET"])
    yield Route("/workflows", create_workflow, methods=["POST"])
    yield Route("/workflows", delete_workflows, methods=["DELETE"])
    yield Route("/workflows/{workflow_id:int}", get_workflow, methods=["GET"])
    yield Route("/workflows/{workflow_id:int}", delete_workflows, methods=["DELETE"])
    yield Route("/workflows/{workflow_id:int}", rerun_workflow, methods=["PUT"])
    yield Route("/workflows/{workflow_id:int}/clone", clone_workflow, methods=["PUT"])
    yield Route("/workflows/{workflow_id:int}/remove", remove_workflow, methods=["PUT"])
    for stream in ("stdout", "stderr"):
        yield Route(f"/workflows/{{workflow_id:int}}/{{job}}/{{instance:int}}/{stream}", workflow_job_output,
                    methods=["GET"])
        yield Route(f"/workflows/{{workflow_id:int}}/{{job}}/{stream}", workflow_job_output, methods=["GET"])


routes = list(_routes())
