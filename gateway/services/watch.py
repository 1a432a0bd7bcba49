"""Live changes for GraphQL subscriptions (docs/graphql.md, "Subscriptions").

One watcher per server looks at the database for the rows that subscribers watch and hands each
subscriber what changed. Another process may make the changes (the provisioner can run apart), so
the in-process signals only wake the watcher early: it polls every POLL_INTERVAL while anyone
subscribes, and not at all otherwise. Each poll is one SQL statement for every job subscriber
together, however many there are (plus, when something changed, one per owner that reads the
changed jobs' rows once for all their subscribers), one for every workflow subscriber together
(plus two that read the changed workflows' rows and job counts), and one for the nodes while an
admin watches them. Fan-out is in memory: a subscriber's Feed keeps only the latest state of each thing it has
not taken yet, so a slow subscriber never holds up the watcher or the others.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anyio import to_thread
from sqlalchemy import Engine, and_, func, or_, select

from gateway.services.clouds import CloudService
from gateway.services.jobs import OUTPUT_CHUNK, JobQuery, JobService, output_path
from gateway.services.workflows import WorkflowRecord
from schema import workflowrun
from schema.db import reading
from schema.enums import ACTIVE, NODE_LIVE, JobStatus, NodeState
from schema.identity import Identity
from schema.signals import Signal
from schema.tables import jobs, nodes, workflows

log = logging.getLogger("prominence.watch")

POLL_INTERVAL = 0.25  # seconds between looks at the database while anyone subscribes
EARLIEST = 0.05  # however often signals wake it, at most one look per this many seconds
# A job that ended is looked at for this long after its end_time (whole seconds, written by any
# process's clock), so that its last change is seen even after a slow poll.
ENDED_MARGIN_S = 5
FETCH_BATCH = 500  # changed jobs' rows are read this many at a time
# Nodes are looked at while in these states, and once more when they leave them.
WATCHED_NODE_STATES = NODE_LIVE | {NodeState.DELETING}


class Feed:
    """What one subscriber has not taken yet: the latest state of each job (or node) that changed,
    in the order of their latest changes. A newer state replaces one not taken yet, so the backlog
    of a slow subscriber is bounded by what it watches."""

    def __init__(self) -> None:
        self._pending: dict[int, Any] = {}
        self._ready = asyncio.Event()

    def put(self, key: int, item: Any) -> None:
        self._pending.pop(key, None)
        self._pending[key] = item
        self._ready.set()

    async def take(self, timeout: float | None = None) -> list[Any]:
        """Everything pending, waiting for something first (TimeoutError after `timeout` s)."""
        if not self._ready.is_set():
            await asyncio.wait_for(self._ready.wait(), timeout)
        self._ready.clear()
        items = list(self._pending.values())
        self._pending.clear()
        return items


@dataclass(eq=False)
class _JobInterest:
    owner: str
    ids: frozenset[int] | None  # None: every job of the owner
    feed: Feed = field(default_factory=Feed)
    fresh: bool = True  # not yet given the current state of what it watches


@dataclass(eq=False)
class _WorkflowInterest:
    owner: str
    ids: frozenset[int]
    feed: Feed = field(default_factory=Feed)
    fresh: bool = True


@dataclass(eq=False)
class _NodeInterest:
    feed: Feed = field(default_factory=Feed)
    fresh: bool = True


def _job_state(row: Any) -> tuple:
    """What a change of a job is: its status, reason, node, attempt or times."""
    return row.status, row.status_reason, row.node_id, row.attempt, row.start_time, row.end_time


def _workflow_state(row: Any) -> tuple:
    """What a change of a workflow is: its status, reason, times, or a count of its `progress`
    (done and failed from its engine's state; queued: its released idle and its running jobs)."""
    done = sum(s.get("ok", 0) for s in row.state.values())
    failed = sum(s.get("failed", 0) for s in row.state.values())
    return row.status, row.status_reason, row.start_time, row.end_time, done, failed, row.queued


class OutputTail:
    """The new bytes of a job's stdout or stderr file as its node's agent appends to it."""

    def __init__(self, path: Path):
        self._path = path
        self._offset = 0

    async def read(self) -> bytes:
        """What was appended since the last read, at most OUTPUT_CHUNK bytes (b"" if nothing)."""
        try:
            size = os.stat(self._path).st_size  # a stat on the event loop: cheap, and most polls stop here
        except FileNotFoundError:
            return b""
        if size < self._offset:
            self._offset = 0  # a new attempt starts its output afresh
        if size == self._offset:
            return b""
        data = await to_thread.run_sync(self._read_at, self._offset)
        self._offset += len(data)
        return data

    def _read_at(self, offset: int) -> bytes:
        with open(self._path, "rb") as handle:
            handle.seek(offset)
            return handle.read(OUTPUT_CHUNK)


class Watch:
    def __init__(self, engine: Engine, jobs_service: JobService, clouds: CloudService, data_dir: Path,
                 signals: Iterable[Signal] = ()):
        self._engine = engine
        self._jobs = jobs_service
        self._clouds = clouds
        self._data_dir = data_dir
        self._signals = tuple(signals)
        self._job_interests: set[_JobInterest] = set()
        self._node_interests: set[_NodeInterest] = set()
        self._workflow_interests: set[_WorkflowInterest] = set()
        self._job_states: dict[int, tuple] = {}  # as the last poll saw them
        self._workflow_states: dict[int, tuple] = {}
        self._node_states: dict[int, tuple] = {}
        self._jobs_polled_at: float | None = None
        self._wanted = asyncio.Event()  # someone subscribes
        self._woken = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @contextlib.contextmanager
    def jobs(self, owner: str, ids: Iterable[int] | None = None) -> Iterator[Feed]:
        """A feed of the owner's jobs `ids` (every job of the owner when None): first the current
        state of each (of each unfinished job when None), then each change."""
        interest = _JobInterest(owner, frozenset(ids) if ids is not None else None)
        with self._interested(self._job_interests, interest):
            yield interest.feed

    @contextlib.contextmanager
    def workflows(self, owner: str, ids: Iterable[int], feed: Feed | None = None) -> Iterator[Feed]:
        """A feed of WorkflowRecords of the owner's workflows `ids`: first the current state of
        each, then each change of its status, reason, times or progress counts. `feed`: one to
        share (with a job feed: job and workflow ids never collide, one counter makes both)."""
        interest = _WorkflowInterest(owner, frozenset(ids), feed or Feed())
        with self._interested(self._workflow_interests, interest):
            yield interest.feed

    @contextlib.contextmanager
    def nodes(self) -> Iterator[Feed]:
        """A feed of NodeViews: first those of the nodes in the pool, then each change of state."""
        interest = _NodeInterest()
        with self._interested(self._node_interests, interest):
            yield interest.feed

    def output(self, job_id: int, stream: str) -> OutputTail:
        return OutputTail(output_path(self._data_dir, job_id, 0, stream))

    @contextlib.contextmanager
    def _interested(self, interests: set, interest: Any) -> Iterator[None]:
        interests.add(interest)
        self._wanted.set()
        self._woken.set()  # its first state comes at once, not a poll interval later
        try:
            yield
        finally:
            interests.discard(interest)
            if not self._job_interests and not self._node_interests and not self._workflow_interests:
                self._wanted.clear()

    # -- the loop -------------------------------------------------------------------------------

    async def _run(self) -> None:
        with contextlib.ExitStack() as stack:
            wakers = [stack.enter_context(signal.listener()) for signal in self._signals] + [self._woken]
            while True:
                await self._wanted.wait()
                for event in wakers:  # cleared before the poll: a change during it wakes the next one
                    event.clear()
                try:
                    await self._poll()
                except Exception:  # noqa: BLE001 - logged; the next poll tries again
                    log.exception("looking for changes to push to subscribers failed")
                await asyncio.sleep(EARLIEST)
                await _any_set(wakers, POLL_INTERVAL - EARLIEST)

    async def _poll(self) -> None:
        started = time.time()
        if self._job_interests:
            # Jobs that ended since shortly before the previous poll: their last change is seen.
            await self._poll_jobs(int(self._jobs_polled_at or started) - ENDED_MARGIN_S)
        self._jobs_polled_at = started if self._job_interests else None
        if self._workflow_interests:
            await self._poll_workflows()
        if self._node_interests:
            await self._poll_nodes()

    async def _poll_jobs(self, ended_since: int) -> None:
        interests = list(self._job_interests)  # those that join during the poll wait for the next
        ids = set().union(*(i.ids for i in interests if i.ids is not None))
        owners = {i.owner for i in interests if i.ids is None}
        rows = await to_thread.run_sync(self._read_job_states, ids, owners, ended_since)
        by_id = {row.id: row for row in rows}
        by_owner: dict[str, list[Any]] = defaultdict(list)
        for row in rows:
            if row.of_owner:
                by_owner[row.owner].append(row)
        changed = {row.id for row in rows if self._job_states.get(row.id) != _job_state(row)}

        deliveries: list[tuple[_JobInterest, int]] = []
        for interest in interests:
            if interest.ids is not None:
                watched = [by_id[i] for i in interest.ids if i in by_id and by_id[i].owner == interest.owner]
            else:
                watched = by_owner.get(interest.owner, [])
            deliveries += [(interest, row.id) for row in watched if row.id in changed or (
                interest.fresh and (interest.ids is not None or row.status in ACTIVE))]
        wanted: dict[str, set[int]] = defaultdict(set)
        for interest, job_id in deliveries:
            wanted[by_id[job_id].owner].add(job_id)
        current = await self._job_rows(wanted)
        for interest, job_id in deliveries:
            if job_id in current:
                interest.feed.put(job_id, current[job_id])
        for interest in interests:
            interest.fresh = False
        self._job_states = {row.id: _job_state(row) for row in rows}

    def _read_job_states(self, ids: set[int], owners: set[str], ended_since: int) -> list[Any]:
        """The one statement of a poll: the watched jobs, and the watched owners' jobs that have not
        ended (or ended lately), each with what a change of it is."""
        of_owners = and_(jobs.c.owner.in_(sorted(owners)),
                         or_(jobs.c.status.in_(sorted(ACTIVE)), jobs.c.end_time >= ended_since))
        query = (select(jobs.c.id, jobs.c.owner, jobs.c.status, jobs.c.status_reason, jobs.c.node_id,
                        jobs.c.attempt, jobs.c.start_time, jobs.c.end_time, of_owners.label("of_owner"))
                 .where(or_(jobs.c.id.in_(sorted(ids)), of_owners)))
        with reading(self._engine) as connection:
            return connection.execute(query).all()

    async def _job_rows(self, wanted: dict[str, set[int]]) -> dict[int, Any]:
        """The jobs' rows as JobService.get() gives them, read once for all their subscribers."""
        found: dict[int, Any] = {}
        for owner, ids in wanted.items():
            ordered = sorted(ids)
            for start in range(0, len(ordered), FETCH_BATCH):
                query = JobQuery(ids=ordered[start:start + FETCH_BATCH], detail=True)
                for row in await self._jobs.list(Identity(username=owner), query, list):
                    found[row.id] = row
        return found

    async def _poll_workflows(self) -> None:
        interests = list(self._workflow_interests)
        ids = set().union(*(i.ids for i in interests))
        rows = await to_thread.run_sync(self._read_workflow_states, ids)
        by_id = {row.id: row for row in rows}
        changed = {row.id for row in rows if self._workflow_states.get(row.id) != _workflow_state(row)}
        deliveries = [(interest, number) for interest in interests for number in interest.ids
                      if number in by_id and by_id[number].owner == interest.owner
                      and (interest.fresh or number in changed)]
        wanted = sorted({number for _, number in deliveries})
        current = await to_thread.run_sync(self._workflow_records, wanted) if wanted else {}
        for interest, number in deliveries:
            if number in current:
                interest.feed.put(number, current[number])
        for interest in interests:
            interest.fresh = False
        self._workflow_states = {row.id: _workflow_state(row) for row in rows}

    def _read_workflow_states(self, ids: set[int]) -> list[Any]:
        """The one statement of a poll for every workflow subscriber: the watched workflows, each
        with what a change of it is (its queued jobs counted by the index on jobs' workflow_id)."""
        queued = (select(func.count()).select_from(jobs)
                  .where(jobs.c.workflow_id == workflows.c.id,
                         or_(jobs.c.status == JobStatus.RUNNING,
                             and_(jobs.c.status == JobStatus.IDLE, jobs.c.blocked.is_(False))))
                  .correlate(workflows).scalar_subquery())
        query = select(workflows.c.id, workflows.c.owner, workflows.c.status, workflows.c.status_reason,
                       workflows.c.start_time, workflows.c.end_time, workflows.c.state,
                       queued.label("queued")).where(workflows.c.id.in_(sorted(ids)))
        with reading(self._engine) as connection:
            return connection.execute(query).all()

    def _workflow_records(self, ids: list[int]) -> dict[int, WorkflowRecord]:
        """The changed workflows as WorkflowService.get() gives them, read once for all their
        subscribers (whose ownership the poll checked)."""
        with reading(self._engine) as connection:
            rows = connection.execute(select(workflows).where(workflows.c.id.in_(ids))).all()
            live = workflowrun.live_counts(connection, [r.id for r in rows if r.status in workflowrun.ACTIVE])
        return {row.id: WorkflowRecord(row, live.get(row.id, {})) for row in rows}

    async def _poll_nodes(self) -> None:
        interests = list(self._node_interests)
        tracked = [node_id for node_id, (state, _) in self._node_states.items() if state in WATCHED_NODE_STATES]
        rows = await to_thread.run_sync(self._read_node_states, tracked)
        changed = {row.id for row in rows if self._node_states.get(row.id) != (row.state, row.state_reason)}
        in_pool = {row.id for row in rows if row.state in WATCHED_NODE_STATES}
        wanted = changed | (in_pool if any(i.fresh for i in interests) else set())
        views = await to_thread.run_sync(self._clouds.nodes_by_id, sorted(wanted)) if wanted else {}
        for interest in interests:
            for node_id in sorted(wanted if interest.fresh else changed):
                if node_id in views:
                    interest.feed.put(node_id, views[node_id])
            interest.fresh = False
        self._node_states = {row.id: (row.state, row.state_reason) for row in rows}

    def _read_node_states(self, tracked: list[int]) -> list[Any]:
        query = select(nodes.c.id, nodes.c.state, nodes.c.state_reason).where(
            or_(nodes.c.state.in_(sorted(WATCHED_NODE_STATES)), nodes.c.id.in_(tracked)))
        with reading(self._engine) as connection:
            return connection.execute(query).all()


async def _any_set(events: list[asyncio.Event], timeout: float) -> None:
    """Until one of the events is set, or `timeout` seconds."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
