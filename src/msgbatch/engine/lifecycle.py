"""Periodic batch housekeeping: expiry, retention (archiving) and reaping of lapsed leases.

Each step is one conditional statement per batch in the store, so several processes may run
it at once without transitioning anything twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from msgbatch.clock import now_us
from msgbatch.config import Settings
from msgbatch.store.base import Store

log = logging.getLogger("msgbatch.lifecycle")


class Lifecycle:
    def __init__(self, store: Store, *, retention_seconds: float, interval: float = 1.0) -> None:
        self.store = store
        self.retention_us = int(retention_seconds * 1_000_000)
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, store: Store, settings: Settings) -> Lifecycle:
        return cls(store, retention_seconds=settings.retention_seconds, interval=settings.lifecycle_interval)

    async def tick(self) -> None:
        now = now_us()
        for batch_id in await self.store.expire_due(now):
            log.info("batch.ended id=%s reason=expired", batch_id)
        for batch_id in await self.store.archive_due(now - self.retention_us, now):
            log.info("batch.archived id=%s", batch_id)
        reaped = await self.store.reap_leases(now)
        if reaped:
            log.info("leases.reaped count=%d", reaped)

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("lifecycle.tick_failed")
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="msgbatch-lifecycle")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
