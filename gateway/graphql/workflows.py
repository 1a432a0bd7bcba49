"""GraphQL workflows: the `Workflow` type, `workflow(id)`, `workflows(...)` (a cursor connection)
and a mutation for each /v1 workflow operation. Resolvers translate; gateway/services/workflows.py
decides, with the same permission rules as /v1 (another user's workflow is as unknown as none)."""
from __future__ import annotations

import base64
import datetime
import json
from contextlib import contextmanager
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import strawberry
from strawberry.scalars import JSON

from gateway.graphql.context import caller, services
from gateway.graphql.jobs import PageInfo, time_of
from gateway.rest.common import MAX_ID, ascii_int
from gateway.rest.workflows import workflow_view
from gateway.services.jobs import JobQuery
from gateway.services.workflows import STATUSES, WorkflowNotFound, WorkflowRecord
from schema.errors import Forbidden, InvalidInput
from schema.jobspec import MAX_BODY_BYTES

if TYPE_CHECKING:
    from gateway.graphql.jobs import Job

LazyJob = Annotated["Job", strawberry.lazy("gateway.graphql.jobs")]
MAX_WORKFLOW_PAGE = 500


@strawberry.type(description="How far a workflow's jobs are (the /v1 `progress`)")
class WorkflowProgress:
    total: int = strawberry.field(description="Job instances in all")
    done: int = strawberry.field(description="Completed successfully")
    failed: int
    queued: int = strawberry.field(description="Idle or running")
    waiting: int = strawberry.field(description="Waiting for the jobs they depend on, or not created yet")


@strawberry.type(description="A workflow: jobs with dependencies and factories (reference section 4)")
class Workflow:
    id: strawberry.ID
    name: str
    status: str = strawberry.field(description="idle, running, completed, failed or deleted")
    status_reason: str | None
    create_time: datetime.datetime
    start_time: datetime.datetime | None
    end_time: datetime.datetime | None
    progress: WorkflowProgress
    rerun_of: strawberry.ID | None = strawberry.field(description="The workflow this one re-runs")
    description: JSON = strawberry.field(description="The submitted workflow, as GET /v1/workflows/<id> shows it "
                                                     "(credentials hidden)")
    record: strawberry.Private[WorkflowRecord]

    @staticmethod
    def of(record: WorkflowRecord) -> Workflow:
        row = record.row
        view = workflow_view(record, True)
        description = {key: value for key, value in view.items()
                       if key not in ("id", "status", "statusReason", "events", "progress")}
        return Workflow(id=strawberry.ID(str(row.id)), name=row.name, status=row.status,
                        status_reason=row.status_reason or None, create_time=time_of(row.create_time),
                        start_time=time_of(row.start_time), end_time=time_of(row.end_time),
                        progress=WorkflowProgress(**record.progress),
                        rerun_of=strawberry.ID(str(row.rerun_of)) if row.rerun_of else None,
                        description=description, record=record)

    @strawberry.field(description="Its jobs that exist so far (a factory's instances are created as they may "
                                  "run), in id order")
    async def jobs(self, info: strawberry.Info) -> list[LazyJob]:
        from gateway.graphql.jobs import Job
        who = await caller(info)
        rows = await services(info).jobs.list(who, JobQuery(ids=[self.record.row.id], workflow=True, detail=True),
                                              list)
        return [Job.of(row) for row in rows]


@strawberry.type
class WorkflowEdge:
    cursor: str
    node: Workflow


@strawberry.type
class WorkflowConnection:
    edges: list[WorkflowEdge]
    page_info: PageInfo
    total_count: int = strawberry.field(description="All the workflows the filter selects")


def _cursor(workflow_id: int) -> str:
    return base64.urlsafe_b64encode(f"workflow:{workflow_id}".encode()).decode()


def _from_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    try:
        kind, _, number = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
        value = ascii_int(number)
    except (ValueError, UnicodeError):
        value, kind = None, ""
    if kind != "workflow" or value is None:
        raise InvalidInput("after: not a cursor of this connection")
    return value


def workflow_id(value: str) -> int:
    number = ascii_int(value)
    if number is None or not 0 < number <= MAX_ID:
        raise InvalidInput(f"id: {value!r} is not a workflow id")
    return number


@contextmanager
def _only_own(number: int) -> Iterator[None]:
    try:
        yield
    except (Forbidden, WorkflowNotFound):
        raise WorkflowNotFound(f"No such workflow: {number}") from None


async def _get(info: strawberry.Info, number: int) -> Workflow:
    record = await services(info).workflows.get(await caller(info), number)
    if record is None:
        raise WorkflowNotFound(f"No such workflow: {number}")
    return Workflow.of(record)


@strawberry.type
class WorkflowQueries:
    @strawberry.field(description="One of the caller's workflows")
    async def workflow(self, info: strawberry.Info, id: strawberry.ID) -> Workflow:  # noqa: A002
        return await _get(info, workflow_id(id))

    @strawberry.field(description=f"The caller's workflows in id order, at most {MAX_WORKFLOW_PAGE} a page")
    async def workflows(self, info: strawberry.Info, status: list[str] | None = None, name: str | None = None,
                        first: int | None = None, after: str | None = None) -> WorkflowConnection:
        who = await caller(info)
        for value in status or ():
            if value not in STATUSES:
                raise InvalidInput(f"status: {value!r} is not one of {', '.join(STATUSES)}")
        size = MAX_WORKFLOW_PAGE if first is None else first
        if not 0 <= size <= MAX_WORKFLOW_PAGE:
            raise InvalidInput(f"first must be from 0 to {MAX_WORKFLOW_PAGE}")
        after_id = _from_cursor(after)
        records, total, more = await services(info).workflows.page(who, status, name, size, after_id)
        edges = [WorkflowEdge(cursor=_cursor(r.row.id), node=Workflow.of(r)) for r in records]
        return WorkflowConnection(edges=edges, total_count=total, page_info=PageInfo(
            has_next_page=more, has_previous_page=after_id is not None,
            start_cursor=edges[0].cursor if edges else None, end_cursor=edges[-1].cursor if edges else None))


@strawberry.type
class WorkflowMutations:
    @strawberry.mutation(description="Submit a workflow: `input` is the JSON that POST /v1/workflows takes")
    async def create_workflow(self, info: strawberry.Info, input: JSON) -> Workflow:  # noqa: A002
        who = await caller(info)
        document = json.dumps(input, ensure_ascii=False)
        if len(document.encode()) > MAX_BODY_BYTES:
            raise InvalidInput(f"input: the workflow description is larger than the limit of {MAX_BODY_BYTES} bytes")
        service = services(info).workflows
        return await _get(info, await service.submit(who, service.parse(document)))

    @strawberry.mutation(description="Delete (stop) an unfinished workflow and its jobs; returns it, deleted")
    async def delete_workflow(self, info: strawberry.Info, id: strawberry.ID) -> Workflow:  # noqa: A002
        number = workflow_id(id)
        with _only_own(number):
            await services(info).workflows.delete(await caller(info), [number])
        return await _get(info, number)

    @strawberry.mutation(description="Re-run a completed or failed workflow: a new workflow that runs only what "
                                     "did not complete successfully and what depends on it")
    async def rerun_workflow(self, info: strawberry.Info, id: strawberry.ID) -> Workflow:  # noqa: A002
        number = workflow_id(id)
        with _only_own(number):
            new = await services(info).workflows.rerun(await caller(info), number)
        return await _get(info, new)

    @strawberry.mutation(description="Submit a copy of one of the caller's workflows; returns the new workflow")
    async def clone_workflow(self, info: strawberry.Info, id: strawberry.ID) -> Workflow:  # noqa: A002
        number = workflow_id(id)
        with _only_own(number):
            new = await services(info).workflows.clone(await caller(info), number)
        return await _get(info, new)

    @strawberry.mutation(description="Take a finished workflow (kept by leaveInQueue) out of the default /v1 "
                                     "listing")
    async def remove_workflow(self, info: strawberry.Info, id: strawberry.ID) -> Workflow:  # noqa: A002
        number = workflow_id(id)
        with _only_own(number):
            await services(info).workflows.remove(await caller(info), number)
        return await _get(info, number)
