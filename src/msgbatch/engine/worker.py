"""`msgbatch worker`: the Runtime with no HTTP API, until SIGTERM or SIGINT.

Run any number of them against one PostgreSQL database, next to `msgbatch serve --no-worker`
API servers. A worker holds nothing the database does not know: claimed requests are leased,
the lease is renewed while they run, and on SIGTERM/SIGINT running requests get `grace`
seconds to finish before everything still held is handed back. A worker killed outright loses
nothing either: its leases run out and other workers take the requests over. With
`metrics_port` set, it also answers GET /metrics, /health and /ready there (engine/probe.py).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from msgbatch.backends.router import Router
from msgbatch.config import Settings
from msgbatch.engine.probe import ProbeServer
from msgbatch.engine.runtime import Runtime
from msgbatch.store import Store

log = logging.getLogger("msgbatch.worker")


class Worker:
    def __init__(self, settings: Settings, *, store: Store | None = None, router: Router | None = None) -> None:
        self.settings = settings
        self.runtime = Runtime(settings, store=store, router=router, dispatch=True, recover=False)
        self.store = self.runtime.store
        self.router = self.runtime.router
        self.manager = self.runtime.manager
        dispatcher = self.runtime.dispatcher
        assert dispatcher is not None
        self.dispatcher = dispatcher
        self.probe: ProbeServer | None = None
        if settings.metrics_port is not None:
            self.probe = ProbeServer(
                self.runtime.metrics, self.store, host=settings.metrics_host, port=settings.metrics_port
            )

    async def start(self) -> None:
        await self.runtime.start()
        if self.probe is not None:
            try:
                await self.probe.start()
            except BaseException:
                await self.runtime.stop()
                raise
        log.info("worker.started owner=%s", self.dispatcher.owner)

    async def stop(self, grace: float | None = None) -> None:
        """Stop claiming; running requests get `grace` seconds, then the rest is handed back."""
        if self.probe is not None:
            await self.probe.stop()
        if not self.runtime.started:
            return
        await self.runtime.stop(grace)
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
