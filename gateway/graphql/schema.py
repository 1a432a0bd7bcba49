"""The GraphQL schema. Resolvers only translate: the services decide, and their domain errors
(schema/errors.py) reach clients as errors with a `code` in their extensions. Any other error is
masked ("Unexpected error."): its details stay in the server's log."""
from __future__ import annotations

import base64
import datetime

import strawberry
from graphql import GraphQLError
from strawberry.extensions import MaskErrors

from gateway.rest.common import MAX_ID, ascii_int
from gateway.services.jobs import MAX_PAGE, JobFilter
from schema.enums import JobStatus as JobStatusValue
from schema.errors import DomainError, InvalidInput
from schema.identity import Identity

JobStatus = strawberry.enum(JobStatusValue, name="JobStatus", description="Where a job is in its life")


@strawberry.type(description="The caller")
class Viewer:
    name: str
    groups: list[str]
    admin: bool


@strawberry.type(description="Why a waiting job cannot start on a cloud now")
class CloudReason:
    cloud: str
    reason: str


def _time(epoch: int | None) -> datetime.datetime | None:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc) if epoch is not None else None


@strawberry.type
class Job:
    id: strawberry.ID
    name: str
    status: JobStatus
    status_reason: str | None = strawberry.field(description="Why it waits, failed or was killed")
    wait_reasons: list[CloudReason] = strawberry.field(description="While it waits: why, per candidate cloud")
    created_at: datetime.datetime
    started_at: datetime.datetime | None
    ended_at: datetime.datetime | None

    @classmethod
    def of(cls, row) -> Job:
        return cls(id=strawberry.ID(str(row.id)), name=row.name, status=JobStatusValue(row.status),
                   status_reason=row.status_reason or None,
                   wait_reasons=[CloudReason(cloud=c, reason=r) for c, r in sorted((row.wait_reasons or {}).items())],
                   created_at=_time(row.create_time), started_at=_time(row.start_time), ended_at=_time(row.end_time))


@strawberry.type
class JobEdge:
    cursor: str
    node: Job


@strawberry.type
class PageInfo:
    has_next_page: bool
    has_previous_page: bool
    start_cursor: str | None
    end_cursor: str | None


@strawberry.type(description="A page of jobs (a Relay connection)")
class JobConnection:
    edges: list[JobEdge]
    page_info: PageInfo
    total_count: int = strawberry.field(description="All the jobs the filter selects")


@strawberry.input
class KeyValue:
    key: str
    value: str


@strawberry.input(description="Which jobs; every field given must hold")
class JobsFilter:
    status: list[JobStatus] | None = None
    name: str | None = None
    labels: list[KeyValue] | None = None
    created_after: datetime.datetime | None = None
    created_before: datetime.datetime | None = None


def _cursor(job_id: int) -> str:
    return base64.urlsafe_b64encode(f"job:{job_id}".encode()).decode()


def _from_cursor(cursor: str | None, name: str) -> int | None:
    if cursor is None:
        return None
    try:
        kind, _, number = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        kind, number = "", ""
    if kind != "job" or ascii_int(number) is None:
        raise InvalidInput(f"{name}: not a cursor of this connection")
    return int(number)


def _job_id(value: str) -> int:
    number = ascii_int(value)
    if number is None or not 0 < number <= MAX_ID:
        raise InvalidInput(f"id: {value!r} is not a job id")
    return number


async def _caller(info: strawberry.Info) -> Identity:
    request = info.context["request"]
    return await request.app.state.auth.user(request.headers.get("authorization"))


@strawberry.type
class Query:
    @strawberry.field(description="The caller, as its token says")
    async def viewer(self, info: strawberry.Info) -> Viewer:
        who = await _caller(info)
        return Viewer(name=who.username, groups=list(who.groups), admin=who.admin)

    @strawberry.field(description="One of the caller's jobs")
    async def job(self, info: strawberry.Info, id: strawberry.ID) -> Job:  # noqa: A002 - its public name
        who = await _caller(info)
        return Job.of(await info.context["request"].app.state.jobs.get(who, _job_id(id)))

    @strawberry.field(description=f"The caller's jobs in id order, at most {MAX_PAGE} a page")
    async def jobs(self, info: strawberry.Info, filter: JobsFilter | None = None,  # noqa: A002 - its public name
                   first: int | None = None, after: str | None = None, last: int | None = None,
                   before: str | None = None) -> JobConnection:
        who = await _caller(info)
        given = filter or JobsFilter()
        selected = JobFilter(
            statuses=[JobStatusValue(s) for s in given.status] if given.status else None, name=given.name,
            labels=[(label.key, label.value) for label in given.labels or ()],
            created_after=int(given.created_after.timestamp()) if given.created_after else None,
            created_before=int(given.created_before.timestamp()) if given.created_before else None)
        page = await info.context["request"].app.state.jobs.page(
            who, selected, first, _from_cursor(after, "after"), last, _from_cursor(before, "before"))
        edges = [JobEdge(cursor=_cursor(row.id), node=Job.of(row)) for row in page.rows]
        return JobConnection(edges=edges, total_count=page.total, page_info=PageInfo(
            has_next_page=page.has_next, has_previous_page=page.has_previous,
            start_cursor=edges[0].cursor if edges else None, end_cursor=edges[-1].cursor if edges else None))


def _masked(error: GraphQLError) -> bool:
    """Errors of the query itself (its syntax, fields, variables) and the services' domain errors
    are the client's to see; anything else is not."""
    return error.original_error is not None and not isinstance(error.original_error, (DomainError, GraphQLError))


class _Schema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context=None) -> None:
        """Only unexpected errors go to the log (with their traceback): the others are answers."""
        super().process_errors([e for e in errors if _masked(e)], execution_context)


schema = _Schema(query=Query, extensions=[lambda: MaskErrors(should_mask_error=_masked)])
