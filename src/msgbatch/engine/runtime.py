"""The Runtime: store, router, manager, dispatcher and lifecycle, started and stopped in one order,
for `msgbatch serve` (with the HTTP API in front) and `msgbatch worker` (without) alike.

    start: open the store (migrations) → recover stale leases (`serve` with its dispatcher on a
           single-process store) → start the dispatcher → start the lifecycle → start webhook
           delivery
    stop:  the reverse; what started is stopped even when a later step failed
"""

from __future__ import annotations

import logging

from msgbatch.backends.config import build_router
from msgbatch.backends.router import Router
from msgbatch.config import Settings
from msgbatch.engine.dispatcher import Dispatcher
from msgbatch.engine.lifecycle import Lifecycle
from msgbatch.engine.webhook_delivery import WebhookDelivery
from msgbatch.manager import BatchManager
from msgbatch.metrics import Metrics
from msgbatch.store import Store, open_store
from msgbatch.usage import UsageReader

log = logging.getLogger("msgbatch.runtime")


class Runtime:
    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        router: Router | None = None,
        metrics: Metrics | None = None,
        dispatch: bool | None = None,
        recover: bool = True,
    ) -> None:
        self.settings = settings
        self.store = store or open_store(settings.database, timeout=settings.database_timeout)
        self.router = router or build_router(settings)
        self.metrics = metrics or Metrics()
        self.manager = BatchManager(self.store, settings)
        self.dispatcher: Dispatcher | None = None
        if settings.worker if dispatch is None else dispatch:
            self.dispatcher = Dispatcher.from_settings(self.manager, self.router, settings, metrics=self.metrics)
            # In one process, the API's calls reach the dispatcher directly.
            self.manager.on_created.append(self.dispatcher.wake)
            self.manager.on_canceled.append(self.dispatcher.batch_canceled)
        # Requests the store finishes in bulk (canceled while waiting, expired) count here too.
        self.manager.on_finished_in_bulk.append(self.metrics.finished_in_bulk)
        reader = UsageReader(self.store, settings)
        self.metrics.watch_store(lambda: reader.gauges(self.backend_of))
        # Expiry, retention and lease reaping are safe to run in every process at once.
        self.lifecycle = Lifecycle(self.manager, interval=settings.lifecycle_interval)
        # Webhooks are delivered by every process, API-only servers included.
        self.webhooks = WebhookDelivery(self.manager, settings, metrics=self.metrics)
        # A `worker` never takes leases over at start, even on SQLite: they may belong to a live
        # process. Leases that ran out are reaped by the lifecycle.
        self.recover = recover
        self._stack: list[str] = []

    def backend_of(self, model: str) -> str | None:
        """The name of the backend a model routes to here (None: none takes it)."""
        backend = self.router.route(model) if model else None
        return backend.name if backend is not None else None

    async def start(self) -> None:
        try:
            await self.store.open()
            self._stack.append("store")
            if self.recover and self.store.single_process and self.dispatcher is not None:
                recovered = await self.manager.recover()
                if recovered:
                    log.info("dispatcher.recovered requests=%d", recovered)
            if self.dispatcher is not None:
                await self.dispatcher.start()
                self._stack.append("dispatcher")
            self.lifecycle.start()
            self._stack.append("lifecycle")
            self.webhooks.start()
            self._stack.append("webhooks")
        except BaseException:
            await self.stop()
            raise

    async def stop(self, grace: float | None = None) -> None:
        """Stop what started, in reverse; running requests get `grace` seconds to finish."""
        while self._stack:
            part = self._stack.pop()
            if part == "webhooks":
                await self.webhooks.stop()
            elif part == "lifecycle":
                await self.lifecycle.stop()
            elif part == "dispatcher" and self.dispatcher is not None:
                await self.dispatcher.stop(self.settings.grace_seconds if grace is None else grace)
            elif part == "store":
                await self.router.aclose()
                await self.store.close()

    @property
    def started(self) -> bool:
        return bool(self._stack)
