"""The ASGI application and the server that owns the store, the dispatcher and the lifecycle tasks."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from msgbatch.api import batches, dashboard, extensions
from msgbatch.backends.router import Router
from msgbatch.config import Settings
from msgbatch.engine.runtime import Runtime
from msgbatch.errors import STATUS_BY_TYPE, InternalServerError, MsgbatchError, error_body
from msgbatch.ids import new_request_id
from msgbatch.metrics import CONTENT_TYPE
from msgbatch.store import Store

log = logging.getLogger("msgbatch.api")


class RequestIdMiddleware:
    """Every response carries a `request-id` header; error bodies repeat it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        header = (b"request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        await self.app(scope, receive, send_with_id)


def error_response(request: Request, error_type: str, message: str, status: int, **headers: str) -> Response:
    request_id = request.scope.get("state", {}).get("request_id")
    return Response(
        error_body(error_type, message, request_id),
        status_code=status,
        media_type="application/json",
        headers=headers or None,
    )


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, MsgbatchError)
    return error_response(request, exc.type, exc.message, exc.status, **exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(request, "not_found_error", "Not found", 404)
    if exc.status_code == 405:
        return error_response(request, "invalid_request_error", "Method not allowed", 405)
    error_type = next((t for t, s in STATUS_BY_TYPE.items() if s == exc.status_code), "api_error")
    return error_response(request, error_type, str(exc.detail), exc.status_code)


Endpoint = Callable[[Request], Awaitable[Response]]


def guarded(endpoint: Endpoint) -> Endpoint:
    """Unexpected failures still answer in the API's error shape (and are logged)."""

    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except MsgbatchError:
            raise
        except Exception:
            log.exception("api.unhandled path=%s", request.url.path)
            return await _api_error(request, InternalServerError("Internal server error"))

    run.__name__ = endpoint.__name__
    return run


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
        api_routes = batches.routes + extensions.routes
        routes: list[BaseRoute] = [Route(r.path, guarded(r.endpoint), methods=r.methods) for r in api_routes]
        routes += [Route("/health", health), Route("/ready", ready), Route("/metrics", metrics)]
        routes += dashboard.routes
        routes += extra_routes or []
        self.app = Starlette(
            routes=routes,
            middleware=[Middleware(RequestIdMiddleware)],
            exception_handlers={MsgbatchError: _api_error, HTTPException: _http_error},
            lifespan=self._lifespan,
        )
        self.app.state.manager = self.manager
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
