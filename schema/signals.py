"""Wake-ups between the parts of one server process (gateway and provisioner threads).

A submission wakes the scheduler at once, and an assignment wakes the agent waiting for it, so a
job starts within milliseconds instead of a polling period. Parts in other processes (the gateway
and the provisioner run apart against PostgreSQL) do not hear these: every waiter also wakes on a
short timeout and looks at the database, so signals only ever make things faster.

To miss nothing, a waiter starts listening before it looks at the database, then waits.
"""
import asyncio
import contextlib
import threading
from collections.abc import Iterator


class Signal:
    def __init__(self) -> None:
        self._condition = threading.Condition()
        self.generation = 0
        self._events: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def notify(self) -> None:
        with self._condition:
            self.generation += 1
            self._condition.notify_all()
            events = list(self._events)
        for loop, event in events:
            loop.call_soon_threadsafe(event.set)

    def wait_since(self, generation: int, timeout: float) -> bool:
        """Block a thread until a notify later than `generation` (or `timeout` s); True if notified."""
        with self._condition:
            return self._condition.wait_for(lambda: self.generation != generation, timeout)

    @contextlib.contextmanager
    def listener(self) -> Iterator[asyncio.Event]:
        """An asyncio.Event, set by any notify while the block runs."""
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._condition:
            self._events.add(entry)
        try:
            yield entry[1]
        finally:
            with self._condition:
                self._events.discard(entry)


async def wait_for_event(event: asyncio.Event, timeout: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout)
        return True
    except TimeoutError:
        return False
