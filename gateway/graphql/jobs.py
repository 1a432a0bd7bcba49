"""Jobs in GraphQL: the `Job` type, `job(id)` and the `jobs` connection."""
from __future__ import annotations

import base64
import datetime

import strawberry

from gateway.graphql.context import caller, services
from gateway.rest.common import MAX_ID, ascii_int
from gateway.services.jobs import MAX_PAGE, JobFilter
from schema.enums import JobStatus as JobStatusValue
from schema.errors import InvalidInput

JobStatus = strawberry.enum(JobStatusValue, name="JobStatus", description="Where a job is in its life")


@strawberry.type(description="Why a waiting job cannot start on a cloud now")
class CloudReason:
    cloud: str
    reason: str


def time_of(epoch: float | None) -> datetime.datetime | None:
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
        """From a row of JobService.get() or .page()."""
        return cls(id=strawberry.ID(str(row.id)), name=row.name, status=JobStatusValue(row.status),
                   status_reason=row.status_reason or None,
                   wait_reasons=[CloudReason(cloud=c, reason=r) for c, r in sorted((row.wait_reasons or {}).items())],
                   created_at=time_of(row.create_time), started_at=time_of(row.start_time),
                   ended_at=time_of(row.end_time))


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

    def selected(self) -> JobFilter:
        return JobFilter(
            statuses=[JobStatusValue(s) for s in self.status] if self.status else None, name=self.name,
            labels=[(label.key, label.value) for label in self.labels or ()],
            created_after=int(self.created_after.timestamp()) if self.created_after else None,
            created_before=int(self.created_before.timestamp()) if self.created_before else None)


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


def job_id(value: str, name: str = "id") -> int:
    number = ascii_int(value)
    if number is None or not 0 < number <= MAX_ID:
        raise InvalidInput(f"{name}: {value!r} is not a job id")
    return number


@strawberry.type
class JobQueries:
    @strawberry.field(description="One of the caller's jobs")
    async def job(self, info: strawberry.Info, id: strawberry.ID) -> Job:  # noqa: A002 - its public name
        who = await caller(info)
        return Job.of(await services(info).jobs.get(who, job_id(id)))

    @strawberry.field(description=f"The caller's jobs in id order, at most {MAX_PAGE} a page")
    async def jobs(self, info: strawberry.Info, filter: JobsFilter | None = None,  # noqa: A002 - its public name
                   first: int | None = None, after: str | None = None, last: int | None = None,
                   before: str | None = None) -> JobConnection:
        who = await caller(info)
        page = await services(info).jobs.page(who, (filter or JobsFilter()).selected(), first,
                                              _from_cursor(after, "after"), last, _from_cursor(before, "before"))
        edges = [JobEdge(cursor=_cursor(row.id), node=Job.of(row)) for row in page.rows]
        return JobConnection(edges=edges, total_count=page.total, page_info=PageInfo(
            has_next_page=page.has_next, has_previous_page=page.has_previous,
            start_cursor=edges[0].cursor if edges else None, end_cursor=edges[-1].cursor if edges else None))
