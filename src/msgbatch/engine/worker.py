"""`msgbatch worker`: the dispatcher and the lifecycle tasks in a process with no HTTP API.

Run any number of them against one PostgreSQL database, next to `msgbatch serve --no-worker`
API servers. A worker holds nothing the database does not know: claimed requests are leased,
the lease is renewed while they run, and on SIGTERM/SIGINT running requests get `grace`
seconds to finish before everything still held is handed back. A worker killed outright loses
nothing either: its leases run out and other workers take the requests over.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from msgbatch.backends.router import Router
from msgbatch.config import Settings
from msgbatch.engine.dispatcher import Dispatcher
from msgbatch.engine.lifecycle import Lifecycle
from msgbatch.store import Store, open_store

log = logging.getLogger("msgbatch.worker")


class Worker:
    def __init__(self, settings: Settings, *, store: Store | None = None, router: Router | None = None) -> None:
        # Backends are configured in one place, next to the API server that also runs them.
        from msgbatch.api.app import build_router

        self.settings = settings
        self.store = store or open_store(settings.database)
        self.router = router or build_router(settings)
        self.dispatcher = Dispatcher.from_settings(self.store, self.router, settings)
        # Expiry, retention and lease reaping are safe to run in every process at once.
        self.lifecycle = Lifecycle.from_settings(self.store, settings)
        self._started = False

    async def start(self) -> None:
        # Never requeue leases at start here, even on SQLite: they may belong to a live process.
        # Leases that ran out are reaped by the lifecycle.
        await self.store.open()
        try:
            await self.dispatcher.start()
            self.lifecycle.start()
        except BaseException:
            await self.store.close()
            raise
        self._started = True
        log.info("worker.started owner=%s", self.dispatcher.owner)

    async def stop(self, grace: float | None = None) -> None:
        """Stop claiming; running requests get `grace` seconds, then the rest is handed back."""
        if not self._started:
            return
        self._started = False
        await self.lifecycle.stop()
        await self.dispatcher.stop(self.settings.grace_seconds if grace is None else grace)
        await self.router.aclose()
        await self.store.close()
        log.info("worker.stopped owner=%s", self.dispatcher.owner)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Until SIGTERM or SIGINT (or `stop` is set), then shut down within the grace period."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
            await stop.wait()
            log.info("worker.stopping grace=%.1fs", self.settings.grace_seconds)
        finally:
            await self.stop()
            for sig in signals:
                loop.remove_signal_handler(sig)
