"""Periodic batch housekeeping: expiry, retention (archiving), reaping of lapsed leases, expired
uploaded files, webhook events any transition left unwritten, expired idempotency keys, and the
store's own upkeep.

Each step is a conditional transition per batch (the manager's rules), so several processes may
run it at once without transitioning anything twice.
"""

from __future__ import annotations

import asyncio
import logging

from msgbatch.clock import now_us
from msgbatch.engine.supervisor import Supervisor
from msgbatch.errors import ServiceUnavailableError
from msgbatch.files import FileManager
from msgbatch.manager import BatchManager

log = logging.getLogger("msgbatch.lifecycle")


class Lifecycle:
    def __init__(self, manager: BatchManager, *, interval: float = 1.0) -> None:
        self.manager = manager
        self.files = FileManager(manager.store)
        self.interval = interval
        self.supervisor = Supervisor("lifecycle")

    async def tick(self) -> None:
        now = now_us()
        for batch_id in await self.manager.expire_due(now):
            log.info("batch.ended id=%s reason=expired", batch_id)
        for batch_id in await self.manager.archive_due(now):
            log.info("batch.archived id=%s", batch_id)
        reaped = await self.manager.reap(now)
        if reaped:
            log.info("leases.reaped count=%d", reaped)
        await self.manager.announce_pending(now)
        await self.manager.sweep(now)
        for file_id in await self.files.expire_due(now):
            log.info("file.expired id=%s", file_id)
        await self.manager.store.tidy()

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except ServiceUnavailableError:
                pass  # the database is away; the store said so once
            except Exception:
                log.exception("lifecycle.tick_failed")
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self.supervisor.start("lifecycle", self._loop)

    async def stop(self) -> None:
        await self.supervisor.stop()
