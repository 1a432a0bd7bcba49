"""Jobs: submit, list, describe, clone, delete, remove, and read stdout/stderr."""
from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from anyio import CapacityLimiter, to_thread
from pydantic import ValidationError
from sqlalchemy import Engine, func, select, update

from schema.identity import Identity
from gateway.services.batcher import JobInserter
from gateway.services.data import check_job_objects, job_object_names
from gateway.services.notify import Notifier, submission_columns
from gateway.storage import ObjectStore
from schema.enums import ACTIVE, TERMINAL, JobStatus, StatusReason
from schema.errors import Forbidden, InvalidInput, InvalidState, JobNotFound, NotFound
from schema.jobspec import JobSpec, describe_errors
from schema.db import reading
from schema.lifecycle import finished
from schema.signals import Signal
from schema.tables import jobs

# Columns a listing needs; the others only with detail.
_LIST_COLUMNS = [jobs.c.id, jobs.c.name, jobs.c.status, jobs.c.status_reason, jobs.c.spec,
                 jobs.c.create_time, jobs.c.start_time, jobs.c.end_time, jobs.c.parameters]
_DETAIL_COLUMNS = [jobs.c.execution, jobs.c.wait_reasons, jobs.c.node_id]
T = TypeVar("T")
# Listings run in worker threads, at most this many at once: however many clients ask for big
# listings, the other requests keep threads and a share of the CPU.
LISTING_THREADS = 2
OUTPUT_CHUNK = 1 << 16  # stdout/stderr are sent from disk in pieces of this size


@dataclass
class ListingQuery:
    """The filters of `GET /v1/jobs` and `GET /v1/workflows` (reference section 2.3)."""

    completed: bool = False
    num: int = 1  # how many finished ones `completed` returns; -1 for all
    all: bool = False
    status: str | None = None
    constraints: list[tuple[str, str]] = field(default_factory=list)
    name: str | None = None
    detail: bool = False
    ids: list[int] | None = None

    def check(self) -> None:
        """Its text is compared in SQL, where PostgreSQL refuses NUL characters."""
        _comparable("name", [self.name])
        _comparable("constraint", [f"{key}={value}" for key, value in self.constraints])

    def conditions(self, table: Any, owner: str, ids_column: Any = None) -> list[Any]:
        """What selects the owner's rows of `table` (jobs or workflows): those listed by id (in
        `ids_column`, default the id), else the active ones or those kept in the queue, or with
        `completed` the `num` most recently finished; then by status, name and labels."""
        conditions = [table.c.owner == owner]
        if self.ids is not None:
            conditions.append((ids_column if ids_column is not None else table.c.id).in_(self.ids))
        elif self.completed and not self.all:
            conditions.append(table.c.end_time.is_not(None))
        elif not self.all:
            conditions.append(table.c.in_queue.is_(True))
        if self.status is not None:
            conditions.append(table.c.status == self.status)
        if self.name is not None:
            conditions.append(table.c.name == self.name)
        conditions += [table.c.spec["labels"][key].as_string() == value for key, value in self.constraints]
        if self.ids is None and self.completed and not self.all:
            recent = select(table.c.id).where(*conditions).order_by(table.c.end_time.desc(), table.c.id.desc())
            if self.num >= 0:
                recent = recent.limit(self.num)
            conditions = [table.c.id.in_(recent.scalar_subquery())]  # the `num` most recently finished
        return conditions


@dataclass
class JobQuery(ListingQuery):
    workflow: bool = False  # `ids` are workflows' ids: their jobs
    workflow: bool = False


def output_path(data_dir: Path, job_id: int, node: int, stream: str) -> Path:
    """Where a job's stdout or stderr (of its node `node`) is kept."""
    return data_dir / "jobs" / str(job_id) / str(node) / stream


def parse_spec(document: str | bytes) -> JobSpec:
    """A job description as `POST /v1/jobs` and GraphQL's createJob take it (JSON text)."""
    try:
        return JobSpec.model_validate_json(document)
    except ValidationError as error:
        raise InvalidInput(describe_errors(error)) from None


@dataclass(frozen=True)
class JobOutput:
    """One of a job's declared outputFiles or outputDirs (a dir is stored as one .tgz)."""

    name: str
    is_dir: bool
    size: int | None  # bytes; None until the job's node has stored it
    url: str | None  # a signed download URL (no token needed), once stored


def job_outputs(spec: dict[str, Any], execution: dict[str, Any], store: ObjectStore) -> list[JobOutput]:
    """The job's outputFiles, then its outputDirs, each with its download URL once stored."""
    stored = execution.get("outputs", {})
    return [JobOutput(name, is_dir, stored[name]["size"], store.signed_url(stored[name]["key"]))
            if name in stored else JobOutput(name, is_dir, None, None)
            for key, is_dir in (("outputFiles", False), ("outputDirs", True)) for name in spec.get(key, ())]


@dataclass
class JobFilter:
    """Which of the caller's jobs a paged listing shows (GraphQL's `jobs(filter: ...)`)."""

    statuses: list[JobStatus] | None = None
    name: str | None = None
    labels: list[tuple[str, str]] = field(default_factory=list)
    created_after: int | None = None
    created_before: int | None = None

    def conditions(self, owner: str) -> list[Any]:
        """The filter in SQL (JobService.page)."""
        conditions = [jobs.c.owner == owner]
        if self.statuses:
            conditions.append(jobs.c.status.in_(self.statuses))
        if self.name is not None:
            conditions.append(jobs.c.name == self.name)
        if self.created_after is not None:
            conditions.append(jobs.c.create_time > self.created_after)
        if self.created_before is not None:
            conditions.append(jobs.c.create_time < self.created_before)
        return conditions + [jobs.c.spec["labels"][key].as_string() == value for key, value in self.labels]

    def matches(self, row: Any) -> bool:
        """The same filter for one job already read (a row of JobService.get(): subscriptions)."""
        labels = row.spec.get("labels") or {}
        return ((not self.statuses or row.status in self.statuses)
                and (self.name is None or row.name == self.name)
                and all(labels.get(key) == value for key, value in self.labels)
                and (self.created_after is None or row.create_time > self.created_after)
                and (self.created_before is None or row.create_time < self.created_before))


@dataclass
class JobPage:
    rows: list[Any]  # in id order
    total: int  # all jobs the filter selects
    has_next: bool
    has_previous: bool


MAX_PAGE = 500


def _comparable(field: str, values: Iterable[str | None]) -> None:
    """Filter values are compared in SQL, where PostgreSQL refuses NUL characters."""
    if any(value is not None and "\x00" in value for value in values):
        raise InvalidInput(f"{field} must not contain NUL characters")


class JobService:
    def __init__(self, engine: Engine, inserter: JobInserter, data_dir: Path, changed: Signal,
                 notifier: Notifier | None = None):
        self._engine = engine
        self._notifier = notifier  # checks webhook URLs at submission (gateway/services/notify.py)
        self._inserter = inserter
        self._data_dir = data_dir
        self._changed = changed  # tells the scheduler that jobs were submitted or stopped
        self._listings = CapacityLimiter(LISTING_THREADS)

    async def submit(self, identity: Identity, spec: JobSpec) -> int:
        if self._notifier is not None:
            self._notifier.check_spec(spec)
        stored = spec.to_stored()
        names = list(job_object_names(stored))
        if names:  # uploaded objects it names exist, in areas it may read (gateway/services/data.py)
            await to_thread.run_sync(check_job_objects, self._engine, identity.username, identity.groups, names)
        now = int(time.time())
        demand = spec.demand()
        queue_limit = demand.pop("queue_limit_s")
        job_id = await self._inserter.insert({
            "owner": identity.username, "name": spec.name, "status": JobStatus.IDLE,
            "status_reason": StatusReason.WAITING, "spec": stored, "workflow_id": None,
            "owner_groups": list(dict.fromkeys(identity.groups)),
            "in_queue": True, "create_time": now, "start_time": None, "end_time": None, "execution": {},
            "node_id": None, "attempt": 0, "retries": 0, **demand,
            "queue_deadline": now + queue_limit if queue_limit else None, **submission_columns(identity, spec),
        })
        self._changed.notify()
        return job_id

    async def list(self, identity: Identity, query: JobQuery, render: Callable[[Iterator[Any]], T]) -> T:
        """`render(jobs)` of the caller's jobs that `query` selects, in id order, run in a worker
        thread (never on the event loop) while the rows are read: a big listing never holds all
        its rows at once. Each job is a row of the listing columns (`execution` with detail)."""
        query.check()
        return await to_thread.run_sync(lambda: render(self._list(identity, query)), limiter=self._listings)

    def _list(self, identity: Identity, query: JobQuery) -> Iterator[Any]:
        conditions = query.conditions(jobs, identity.username, jobs.c.workflow_id if query.workflow else None)
        columns = _LIST_COLUMNS + (_DETAIL_COLUMNS if query.detail else [])
        # The jobs are found first (a MATERIALIZED CTE), then sorted: with a plain ORDER BY id,
        # PostgreSQL misjudges how few rows the filters keep (owner and in_queue are correlated)
        # and walks the primary key to skip the sort, reading every job in the table: 18 ms
        # instead of 0.5 for 100 jobs out of 145,000.
        listed = select(*columns).where(*conditions).cte("listed").prefix_with("MATERIALIZED")
        with reading(self._engine) as connection:  # held while the views are made: no write lock
            yield from connection.execute(select(listed).order_by(listed.c.id))

    async def get(self, identity: Identity, job_id: int) -> Any:
        """The caller's job, with its execution record."""
        rows = await to_thread.run_sync(lambda: list(self._list(identity, JobQuery(ids=[job_id], detail=True))))
        if not rows:
            raise JobNotFound(f"No such job: {job_id}")
        return rows[0]

    async def page(self, identity: Identity, selected: JobFilter, first: int | None = None, after: int | None = None,
                   last: int | None = None, before: int | None = None) -> JobPage:
        """A page of the caller's jobs in id order (keyset pagination on the id): the `first` after
        job `after`, or the `last` before job `before`; at most MAX_PAGE."""
        if first is not None and last is not None:
            raise InvalidInput("first and last cannot be used together")
        for name, value in (("first", first), ("last", last)):
            if value is not None and not 0 <= value <= MAX_PAGE:
                raise InvalidInput(f"{name} must be from 0 to {MAX_PAGE}")
        _comparable("filter.name", [selected.name])
        _comparable("filter.labels", [text for pair in selected.labels for text in pair])
        size = last if last is not None else (first if first is not None else MAX_PAGE)
        conditions = selected.conditions(identity.username)
        window = list(conditions)
        if after is not None:
            window.append(jobs.c.id > after)
        if before is not None:
            window.append(jobs.c.id < before)
        backwards = last is not None
        order = jobs.c.id.desc() if backwards else jobs.c.id

        def run() -> JobPage:
            with reading(self._engine) as connection:
                total = connection.execute(select(func.count()).select_from(jobs).where(*conditions)).scalar_one()
                rows = connection.execute(select(*_LIST_COLUMNS, *_DETAIL_COLUMNS)
                                          .where(*window).order_by(order).limit(size + 1)).all()
            more = len(rows) > size
            rows = rows[:size]
            if backwards:
                rows.reverse()
            return JobPage(rows, total, has_next=more if not backwards else before is not None,
                           has_previous=more if backwards else after is not None)
        return await to_thread.run_sync(run, limiter=self._listings)

    async def counts(self, identity: Identity) -> dict[JobStatus, int]:
        """How many jobs the caller has in each status (none: 0), in one GROUP BY."""
        def run() -> dict[JobStatus, int]:
            with reading(self._engine) as connection:
                found = dict(connection.execute(select(jobs.c.status, func.count()).where(
                    jobs.c.owner == identity.username).group_by(jobs.c.status)).all())
            return {status: found.get(status, 0) for status in JobStatus}
        return await to_thread.run_sync(run, limiter=self._listings)

    async def runs(self, job_id: int, attempt: int, owner: str) -> bool:
        """Whether the job of a job token still runs that attempt (a primary-key lookup)."""
        def run() -> bool:
            with self._engine.connect() as connection:
                return connection.execute(select(jobs.c.id).where(
                    jobs.c.id == job_id, jobs.c.attempt == attempt, jobs.c.owner == owner,
                    jobs.c.status == JobStatus.RUNNING)).first() is not None
        return await to_thread.run_sync(run)

    def _owned(self, connection, identity: Identity, job_id: int, *columns) -> Any:
        """The job's row: JobNotFound when it does not exist, Forbidden when it is another user's."""
        row = connection.execute(select(jobs.c.owner, *columns).where(jobs.c.id == job_id)).first()
        if row is None:
            raise JobNotFound("Job does not exist")
        if row.owner != identity.username:
            raise Forbidden("Not authorized to access this job")
        return row

    async def clone(self, identity: Identity, job_id: int) -> int:
        def load() -> dict[str, Any]:
            with self._engine.connect() as connection:
                return self._owned(connection, identity, job_id, jobs.c.spec).spec
        try:
            spec = JobSpec.model_validate(await to_thread.run_sync(load))
        except ValidationError as error:  # stored before a rule that it breaks existed
            raise InvalidState(f"The job cannot be cloned: {describe_errors(error)}") from None
        return await self.submit(identity, spec)

    async def delete(self, identity: Identity, job_ids: list[int]) -> None:
        """Delete every listed job, or (when any is unknown or already finished) none of them."""
        await to_thread.run_sync(self._delete, identity, job_ids)
        self._changed.notify()  # running ones are stopped by their agents at the next heartbeat

    def _delete(self, identity: Identity, job_ids: list[int]) -> None:
        now = int(time.time())
        with self._engine.begin() as connection:
            found = connection.execute(
                select(jobs.c.id, jobs.c.status, jobs.c.spec)
                .where(jobs.c.id.in_(job_ids), jobs.c.owner == identity.username)
            ).all()
            if len(found) != len(set(job_ids)):  # unknown, or another user's: not told apart
                raise JobNotFound("No such job(s)")
            done = sorted(row.id for row in found if row.status in TERMINAL)
            if done:
                raise InvalidState(f"Job(s) already finished: {', '.join(map(str, done))}")
            for row in found:
                connection.execute(update(jobs).where(jobs.c.id == row.id, jobs.c.status.in_(ACTIVE)).values(
                    finished(row.spec, JobStatus.DELETED, StatusReason.DELETED_BY_USER, now)))

    async def remove(self, identity: Identity, job_id: int) -> None:
        """Take a finished job that leaveInQueue kept out of the default listing."""
        def run() -> None:
            with self._engine.begin() as connection:
                row = self._owned(connection, identity, job_id, jobs.c.in_queue, jobs.c.status)
                if not row.in_queue:
                    raise InvalidState("Job is no longer in the queue")
                if row.status not in TERMINAL:
                    raise InvalidState(f"Job {job_id} has not finished: delete it to stop it, then remove it")
                connection.execute(update(jobs).where(jobs.c.id == job_id).values(in_queue=False))
        await to_thread.run_sync(run)

    async def read_output(self, identity: Identity, job_id: int, stream: str, node: int,
                          offset: int) -> AsyncIterator[bytes]:
        """The job's stdout or stderr from byte `offset` on (the CLI's `--tail` polls this way), as
        it is on disk now, read in pieces. Errors are raised here, before the first byte."""
        def open_at_offset() -> tuple[BinaryIO, int]:
            with self._engine.connect() as connection:
                self._owned(connection, identity, job_id)
            try:
                handle = open(output_path(self._data_dir, job_id, node, stream), "rb")
            except FileNotFoundError:
                raise NotFound(f"{stream} does not exist") from None  # the job exists: a 404 in REST
            remaining = max(0, os.fstat(handle.fileno()).st_size - offset)  # past the end: nothing
            if remaining:
                handle.seek(offset)
            return handle, remaining
        handle, remaining = await to_thread.run_sync(open_at_offset)
        return _pieces(handle, remaining)


async def _pieces(handle: BinaryIO, remaining: int) -> AsyncIterator[bytes]:
    try:
        while remaining > 0:
            piece = await to_thread.run_sync(handle.read, min(OUTPUT_CHUNK, remaining))
            if not piece:  # truncated meanwhile (a new attempt starts its output afresh)
                return
            remaining -= len(piece)
            yield piece
    finally:
        handle.close()
