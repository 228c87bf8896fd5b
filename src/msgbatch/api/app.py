"""The ASGI application and the server that owns the store, the dispatcher and the lifecycle tasks."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from msgbatch.api import batches, dashboard, extensions, openai, openapi, usage
from msgbatch.api.body import CreateBudget
from msgbatch.api.exceptions import error_response, handle_exception
from msgbatch.api.forwarded import ProxyPolicy
from msgbatch.api.middleware import ApiMiddleware
from msgbatch.backends.router import Router
from msgbatch.config import Settings
from msgbatch.engine.runtime import Runtime
from msgbatch.errors import MsgbatchError
from msgbatch.metrics import CONTENT_TYPE
from msgbatch.openai_batches import OpenAIBatches
from msgbatch.store import Store

log = logging.getLogger("msgbatch.api")


async def health(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def ready(request: Request) -> Response:
    server: MsgBatchServer = request.app.state.server
    try:
        await server.store.ping()
    except Exception as exc:
        return error_response(request, "api_error", f"database unreachable: {exc}", 503)
    return Response(b'{"status":"ready"}', media_type="application/json")


async def metrics(request: Request) -> Response:
    server: MsgBatchServer = request.app.state.server
    await server.metrics.refresh()
    return Response(server.metrics.render(), media_type=CONTENT_TYPE)


class MsgBatchServer:
    """Owns the moving parts; `app` starts and stops them through the ASGI lifespan."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        router: Router | None = None,
        extra_routes: list[BaseRoute] | None = None,
    ) -> None:
        self.settings = settings
        self.runtime = Runtime(settings, store=store, router=router)
        self.store = self.runtime.store
        self.router = self.runtime.router
        self.manager = self.runtime.manager
        self.metrics = self.runtime.metrics
        self.dispatcher = self.runtime.dispatcher
        self.lifecycle = self.runtime.lifecycle
        routes: list[BaseRoute] = [*batches.routes, *extensions.routes, *openai.routes, *usage.routes]
        routes += [Route("/health", health), Route("/ready", ready)]
        routes += [Route("/metrics", metrics), *openapi.routes, *dashboard.routes, *(extra_routes or [])]
        self.app = Starlette(
            routes=routes,
            middleware=[Middleware(ApiMiddleware, policy=ProxyPolicy.from_settings(settings))],
            exception_handlers={MsgbatchError: handle_exception, HTTPException: handle_exception},
            lifespan=self._lifespan,
        )
        # `/path/` is not `/path`: a 404 in the API's shape, not a redirect built from the client's Host.
        self.app.router.redirect_slashes = False
        self.app.state.create_budget = CreateBudget(settings.create_memory_bytes, settings.create_memory_wait)
        self.app.state.manager = self.manager
        self.app.state.openai = OpenAIBatches(self.manager)
        self.app.state.settings = settings
        self.app.state.server = self
        self.app.state.metrics = self.metrics

    async def start(self) -> None:
        await self.runtime.start()

    async def stop(self) -> None:
        await self.runtime.stop()

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Any) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.stop()


def create_app(settings: Settings) -> Starlette:
    return MsgBatchServer(settings).app
