"""Around every HTTP request: a request id, `Cache-Control: no-store`, the origin, and the one handler.

Every response carries a `request-id` header (error bodies repeat it) and, unless the route set
its own (the dashboard's files do), `cache-control: no-store`: answers carry batch state and must
not be kept by a shared cache. The request's origin (`api/forwarded.py`) is worked out and
checked first, so a request naming a host this server does not answer as is refused before any
route runs -- except the probes (`/health`, `/ready`, `/metrics`), which name no URL and are
called by address. Whatever escapes Starlette's own exception handling lands in
`handle_exception`.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from msgbatch.api.exceptions import exception_response
from msgbatch.api.forwarded import ProxyPolicy
from msgbatch.ids import new_request_id

NO_STORE = (b"cache-control", b"no-store")
PROBES = frozenset({"/health", "/ready", "/metrics"})


class ApiMiddleware:
    def __init__(self, app: ASGIApp, policy: ProxyPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        request_id_header = (b"request-id", request_id.encode())
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", ()))
                headers.append(request_id_header)
                if not any(name == b"cache-control" for name, _ in headers):
                    headers.append(NO_STORE)
                message["headers"] = headers
            await send(message)

        try:
            if scope["path"] not in PROBES:
                state["origin"] = self.policy.origin(scope)
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:
            response = exception_response(Request(scope, receive), exc)
            if not started:
                await response(scope, receive, send_with_headers)
            # Else the answer is cut short: the server closes the connection, and the client sees
            # an incomplete response rather than a clean end.
