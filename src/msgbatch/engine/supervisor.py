"""Side loops that cannot die silently: a loop that fails is logged with its traceback and
started again after a backoff; `stop()` cancels them all and waits for them to finish."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("msgbatch.supervisor")

Loop = Callable[[], Awaitable[None]]


class Supervisor:
    def __init__(self, owner: str, *, first_delay: float = 0.1, max_delay: float = 10.0) -> None:
        self.owner = owner
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.failures: dict[str, int] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, name: str, loop: Loop) -> None:
        self._tasks.append(asyncio.create_task(self._keep(name, loop), name=f"msgbatch-{name}"))

    async def _keep(self, name: str, loop: Loop) -> None:
        delay = self.first_delay
        while True:
            try:
                await loop()
                return  # a loop that returns is done, not failed
            except asyncio.CancelledError:
                raise
            except Exception:
                self.failures[name] = self.failures.get(name, 0) + 1
                log.exception("loop.failed name=%s owner=%s restart_in=%.1fs", name, self.owner, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_delay)

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            # Python 3.11's asyncio.wait_for (psycopg_pool waits for a connection with it) returns
            # the result and drops the cancellation when both land at once: the loop then goes on.
            # Cancel it again until it ends.
            while not task.done():
                await asyncio.wait({task}, timeout=0.5)
                if not task.done():
                    task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
