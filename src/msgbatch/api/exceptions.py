"""The one exception handler: whatever a request raises, the client gets the API's error body.

`handle_exception` is registered with Starlette for the exceptions it dispatches itself
(`MsgbatchError`, `HTTPException`) and called by `ApiMiddleware` for everything else, so every
route, the dashboard's included, answers in one shape: its API's (`api/dialects.py` says which
a route belongs to). Errors of the API are answered, not logged; a client that went away is one
INFO line; anything else is a bug: one ERROR line with its traceback, and `500 api_error`.
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Match

from msgbatch.api.dialects import render_error
from msgbatch.errors import (
    STATUS_BY_TYPE,
    InternalServerError,
    MethodNotAllowedError,
    MsgbatchError,
    NotFoundError,
)

log = logging.getLogger("msgbatch.api")


def error_response(
    request: Request,
    error_type: str,
    message: str,
    status: int,
    *,
    param: str | None = None,
    code: str | None = None,
    **headers: str,
) -> Response:
    request_id = request.scope.get("state", {}).get("request_id")
    body, status = render_error(request.url.path, error_type, message, status, request_id, param=param, code=code)
    return Response(body, status_code=status, media_type="application/json", headers=headers or None)


def _allowed_methods(request: Request) -> str:
    """Every method some route serves on this path (Starlette's own 405 names one route's only)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


def exception_response(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        if exc.status_code == 404:
            exc = NotFoundError("Not found")
        elif exc.status_code == 405:
            exc = MethodNotAllowedError("Method not allowed", headers={"allow": _allowed_methods(request)})
        else:
            error_type = next((t for t, s in STATUS_BY_TYPE.items() if s == exc.status_code), "api_error")
            return error_response(request, error_type, str(exc.detail), exc.status_code, **(exc.headers or {}))
    elif isinstance(exc, ClientDisconnect):
        if "refused" in request.scope.get("state", {}):
            exc = MsgbatchError("Refused by the HTTP server")  # already logged there
        else:
            log.info(
                "http.client_disconnected method=%s path=%s received=%s",
                request.method,
                request.url.path,
                getattr(exc, "received", "?"),
            )
            exc = MsgbatchError("Client disconnected")  # nobody reads this answer
    elif not isinstance(exc, MsgbatchError):
        log.error("api.unhandled method=%s path=%s", request.method, request.url.path, exc_info=exc)
        exc = InternalServerError("Internal server error")
    return error_response(request, exc.type, exc.message, exc.status, param=exc.param, code=exc.code, **exc.headers)


async def handle_exception(request: Request, exc: Exception) -> Response:
    return exception_response(request, exc)
