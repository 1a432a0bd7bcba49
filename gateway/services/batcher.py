"""Group commit for new jobs: submissions that arrive together share one transaction.

A commit is the expensive part of a submission (an fsync on PostgreSQL, a WAL append on SQLite).
One writer thread takes every submission waiting in its queue, allocates their ids with one
UPDATE of the shared counter, inserts them with one INSERT and commits once; each submitter's
201 is sent only after that commit, so an acknowledged job survives a crash of the server.

A group whose commit fails (a row the database refuses) is committed again one row at a time, so
only the submitter of the bad row hears of the failure and the others still get their ids.
"""
import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine, insert, update

from schema.tables import id_counter, jobs

MAX_BATCH = 1000


def allocate_ids(connection, count: int) -> range:
    """`count` new ids from the counter shared by jobs and workflows, inside the caller's transaction."""
    last = connection.execute(
        update(id_counter).where(id_counter.c.name == "ids")
        .values(value=id_counter.c.value + count).returning(id_counter.c.value)
    ).scalar_one()
    return range(last - count + 1, last + 1)


class JobInserter:
    def __init__(self, engine: Engine):
        self._engine = engine
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="job-inserter", daemon=True)
        self._thread.start()

    async def insert(self, row: dict[str, Any] | Callable[[Connection], int]) -> int:
        """Store one job row (without `id`); returns its id once the row is committed. A callable
        instead stores what it likes with the group's connection (a workflow and its jobs) and
        returns the id to answer: it is committed with the group, all or nothing."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((row, future, loop))
        return await future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                batch.append(item)
            self._commit(batch)

    def _store(self, batch: list) -> list[int]:
        with self._engine.begin() as connection:
            rows = [row for row, _, _ in batch if not callable(row)]
            ids = iter(allocate_ids(connection, len(rows)) if rows else ())
            answers = [next(ids) if not callable(row) else None for row, _, _ in batch]
            if rows:
                connection.execute(insert(jobs), [dict(row, id=i) for i, row in zip(answers, (
                    row for row, _, _ in batch)) if i is not None])
            answers = [row(connection) if callable(row) else i for i, (row, _, _) in zip(answers, batch)]
        return answers

    def _commit(self, batch: list) -> None:
        try:
            ids = self._store(batch)
        except Exception as error:
            if len(batch) > 1:
                for item in batch:
                    self._commit([item])
                return
            _, future, loop = batch[0]
            loop.call_soon_threadsafe(_settle, future, None, error)
            return
        for i, (_, future, loop) in zip(ids, batch):
            loop.call_soon_threadsafe(_settle, future, i, None)


def _settle(future: asyncio.Future, result: int | None, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
