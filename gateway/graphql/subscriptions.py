"""Subscriptions over graphql-transport-ws (docs/graphql.md, "Subscriptions"): one job's changes,
the changes of the caller's jobs a filter selects, a job's stdout or stderr as it is written, one
workflow's changes (status and progress), and (admins only) the nodes' changes. The server's
watcher (gateway/services/watch.py) finds the changes. A subscription holds only while its token
does: it ends with UNAUTHENTICATED when the token expires, or (a job token) when that job's attempt
is over."""
from __future__ import annotations

import codecs
import contextlib
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

import strawberry

from gateway.graphql.context import authorization, services
from gateway.graphql.jobs import Job, JobsFilter, job_id
from gateway.graphql.nodes import Node
from gateway.graphql.workflows import Workflow, workflow_id
from gateway.services.watch import POLL_INTERVAL, Feed
from gateway.services.workflows import FINISHED, WorkflowNotFound, WorkflowRecord
from schema.enums import TERMINAL
from schema.errors import Forbidden, Unauthenticated
from schema.identity import Identity

T = TypeVar("T")


@strawberry.enum(description="A job's standard output or standard error")
class OutputStream(Enum):
    STDOUT = "stdout"
    STDERR = "stderr"


@dataclass
class _Session:
    """The caller of one subscription, for as long as its token holds."""

    who: Identity
    expiry: float
    authorization: str | None
    state: Any  # the app's services

    @classmethod
    async def open(cls, info: strawberry.Info) -> _Session:
        given = authorization(info)
        state = services(info)
        who, expiry = await state.auth.user_until(given)
        return cls(who, expiry, given, state)

    def jobs(self, ids: set[int] | None = None) -> contextlib.AbstractContextManager[Feed]:
        """The feed of the caller's jobs `ids` (all when None). A job token's own job is watched
        too: the token holds only while that job runs its attempt."""
        if ids is not None and self.who.job_id is not None:
            ids = ids | {self.who.job_id}
        return self.state.watch.jobs(self.who.username, ids)

    @contextlib.contextmanager
    def workflows(self, ids: set[int]) -> Iterator[Feed]:
        """The feed of the caller's workflows `ids`; with a job token, its job's changes come on
        the same feed (job and workflow ids never collide), so that take() sees its attempt end."""
        with contextlib.ExitStack() as stack:
            feed = stack.enter_context(self.jobs(set())) if self.who.job_id is not None else None
            yield stack.enter_context(self.state.watch.workflows(self.who.username, ids, feed))

    async def take(self, feed: Feed, timeout: float | None = None) -> list[Any]:
        """The next changes on `feed` ([] after `timeout` s); Unauthenticated once the token has
        expired, or once a job token's attempt is over."""
        left = self.expiry - time.time()
        try:
            items = await feed.take(left if timeout is None else min(timeout, left))
        except TimeoutError:
            items = []
        if time.time() >= self.expiry:
            raise Unauthenticated("The token has expired")
        if self.who.job_id is not None and any(getattr(item, "id", None) == self.who.job_id for item in items):
            await self.state.auth.user(self.authorization)  # its job changed: does it still run that attempt?
        return items


class _Sent:
    """What a subscription last sent of each job or node: the watcher may hand the same state twice
    (it reads a changed row after it noticed the change), and a client gets it once."""

    def __init__(self, state: Callable[[Any], Any] = lambda item: item,
                 key: Callable[[Any], int] = lambda item: item.id) -> None:
        self._state = state
        self._key = key
        self._last: dict[int, Any] = {}

    def is_new(self, item: Any) -> bool:
        state, key = self._state(item), self._key(item)
        if self._last.get(key) == state:
            return False
        self._last[key] = state
        return True

    def forget(self, key: int) -> None:
        self._last.pop(key, None)


def _job_state(row: Any) -> tuple:
    """A job's row without its description: that never changes, and may be large (inputs)."""
    return tuple(value for key, value in row._mapping.items() if key != "spec")


def _workflow_state(record: WorkflowRecord) -> tuple:
    """What a workflowUpdated event shows of a workflow that may change."""
    row = record.row
    return row.status, row.status_reason, row.start_time, row.end_time, tuple(record.progress.items())


def _event(info: strawberry.Info, value: T) -> T:
    """Each event is resolved afresh: the connection's DataLoaders, which all its events share,
    would otherwise give what they loaded for an earlier one (a node's old state, say)."""
    info.context["loaders"] = {}
    return value


@strawberry.type
class Subscription:
    @strawberry.subscription(description="One of the caller's jobs: its current state, then each change of its "
                                          "status, reason, node or times, until it has finished")
    async def job_updated(self, info: strawberry.Info,
                          id: strawberry.ID) -> AsyncGenerator[Job, None]:  # noqa: A002 - its public name
        session = await _Session.open(info)
        number = job_id(id)
        await session.state.jobs.get(session.who, number)  # another user's job: NOT_FOUND, as in queries
        sent = _Sent(_job_state)
        with session.jobs({number}) as feed:
            while True:
                for row in await session.take(feed):
                    if row.id == number and sent.is_new(row):
                        yield _event(info, Job.of(row))
                        if row.status in TERMINAL:
                            return

    @strawberry.subscription(description="The caller's jobs the filter selects: the current state of each "
                                          "unfinished one, then each change (never ends)")
    async def jobs_updated(self, info: strawberry.Info,
                           filter: JobsFilter | None = None) -> AsyncGenerator[Job, None]:  # noqa: A002
        session = await _Session.open(info)
        selected = (filter or JobsFilter()).selected()
        sent = _Sent(_job_state)
        with session.jobs() as feed:
            while True:
                for row in await session.take(feed):
                    if selected.matches(row) and sent.is_new(row):
                        yield _event(info, Job.of(row))
                    if row.status in TERMINAL:
                        sent.forget(row.id)  # what is kept stays bounded by the unfinished jobs

    @strawberry.subscription(description="A job's stdout or stderr as text: what it has written so far, then "
                                          "what it writes while it runs; ends once the job has finished and "
                                          "all of it was sent")
    async def job_output(self, info: strawberry.Info, id: strawberry.ID,  # noqa: A002 - its public name
                         stream: OutputStream) -> AsyncGenerator[str, None]:
        session = await _Session.open(info)
        number = job_id(id)
        await session.state.jobs.get(session.who, number)
        tail = session.state.watch.output(number, stream.value)
        # Incremental: a character whose bytes arrive in two pieces is sent whole, with the second.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        ended = False
        with session.jobs({number}) as feed:
            while True:
                while data := await tail.read():
                    if text := decoder.decode(data):
                        yield text
                if ended:  # its node sends all the output before it reports the end: this was the rest
                    if text := decoder.decode(b"", final=True):
                        yield text
                    return
                changes = await session.take(feed, POLL_INTERVAL)  # new output is looked for as often
                ended = any(row.id == number and row.status in TERMINAL for row in changes)

    @strawberry.subscription(description="One of the caller's workflows: its current state, then each change of "
                                          "its status, reason, times or progress counts, until it has finished")
    async def workflow_updated(self, info: strawberry.Info,
                               id: strawberry.ID) -> AsyncGenerator[Workflow, None]:  # noqa: A002 - its public name
        session = await _Session.open(info)
        number = workflow_id(id)
        if await session.state.workflows.get(session.who, number) is None:  # another user's: as unknown
            raise WorkflowNotFound(f"No such workflow: {number}")
        sent = _Sent(_workflow_state, key=lambda record: record.row.id)
        with session.workflows({number}) as feed:
            while True:
                for item in await session.take(feed):
                    if isinstance(item, WorkflowRecord) and item.row.id == number and sent.is_new(item):
                        yield _event(info, Workflow.of(item))
                        if item.row.status in FINISHED:
                            return

    @strawberry.subscription(description="Admins only: the nodes in the pool, then each change of a node's state")
    async def node_updated(self, info: strawberry.Info) -> AsyncGenerator[Node, None]:
        session = await _Session.open(info)
        if not session.who.admin:
            raise Forbidden("Only admins may do this")
        sent = _Sent()
        with session.state.watch.nodes() as feed:
            while True:
                for view in await session.take(feed):
                    if sent.is_new(view):
                        yield _event(info, Node.of(view))
