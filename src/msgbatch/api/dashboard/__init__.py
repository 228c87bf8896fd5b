"""The web dashboard: static HTML, CSS and vanilla JS (no build step), and the one endpoint only it uses.

The page itself holds no data: it asks for an API key, keeps it in the browser's session (or local)
storage, and calls the JSON API with `x-api-key`, so it sees exactly what that key may see, and
nothing at all without a valid key.
"""

from __future__ import annotations

import functools
from importlib import resources

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from msgbatch.api.auth import workspace_of
from msgbatch.api.batches import batch_id_of
from msgbatch.clock import rfc3339
from msgbatch.errors import InvalidRequestError, NotFoundError
from msgbatch.manager import BatchManager
from msgbatch.metrics import Metrics
from msgbatch.models import RESULT_CODES
from msgbatch.usage import UsageReader

_MEDIA_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}

# The page loads only its own script and style, talks only to this origin, and cannot be framed.
_HEADERS = {
    "cache-control": "no-cache",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}


@functools.cache
def _read(name: str) -> bytes:
    return resources.files(__name__).joinpath(name).read_bytes()


async def index(request: Request) -> Response:
    return Response(_read("index.html"), media_type=_MEDIA_TYPES["index.html"], headers=_HEADERS)


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in _MEDIA_TYPES:
        raise NotFoundError("Not found")
    return Response(_read(name), media_type=_MEDIA_TYPES[name], headers=_HEADERS)


async def stats(request: Request) -> Response:
    """Not part of the hosted API: where a batch's requests went, from what the store counted as
    their results were written (by model and backend, errors by type, tokens and cost, throughput
    over time), and the time they spent per backend, measured in memory by this process's
    dispatcher since the process started (`backends`).
    """
    manager: BatchManager = request.app.state.manager
    metrics: Metrics = request.app.state.metrics
    workspace = workspace_of(request, manager.settings)
    batch = await manager.get(workspace, batch_id_of(request))
    reader = UsageReader(manager.store, manager.settings)
    timing = metrics.batch_timing(batch.seq)
    backends = []
    if timing is not None and timing.backends:
        for name, t in sorted(timing.backends.items()):
            backends.append(
                {
                    "backend": name,
                    "calls": t.calls,
                    "errors": t.errors,
                    "total_seconds": round(t.total_seconds, 6),
                    "mean_seconds": round(t.total_seconds / t.calls, 6) if t.calls else None,
                    "max_seconds": round(t.max_seconds, 6),
                }
            )
    body = {
        "id": batch.id,
        "type": "message_batch_stats",
        "since": rfc3339(int(metrics.started_at * 1_000_000)),
        "first_call_at": rfc3339(int(timing.first_call_at * 1_000_000)) if timing else None,
        "last_call_at": rfc3339(int(timing.last_call_at * 1_000_000)) if timing else None,
        "backends": backends,
        **await reader.breakdown(batch),
        "throughput": await reader.throughput(batch),
    }
    return Response(msgspec.json.encode(body), media_type="application/json")


def _int(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise InvalidRequestError(f"{name}: Input should be an integer from {low} to {high}")
    return int(text)


async def results_page(request: Request) -> Response:
    """Not part of the hosted API: one page of a batch's results (those written so far), as JSON,
    for the dashboard's table: `?after=POSITION&limit=N&type=errored&custom_id=X`."""
    manager: BatchManager = request.app.state.manager
    workspace = workspace_of(request, manager.settings)
    type_name = request.query_params.get("type") or None
    if type_name is not None and type_name not in RESULT_CODES:
        raise InvalidRequestError(f"type: Input should be one of {', '.join(RESULT_CODES)}")
    lines, after = await manager.result_page(
        workspace,
        batch_id_of(request),
        after=_int(request, "after", 0, 0, 1 << 40),
        limit=_int(request, "limit", 100, 1, 1000),
        result_type=RESULT_CODES[type_name] if type_name else None,
        custom_id=request.query_params.get("custom_id") or None,
    )
    following = str(after).encode() if after is not None else b"null"
    body = b'{"data":[' + b",".join(lines) + b'],"next":' + following + b"}"
    return Response(body, media_type="application/json")


async def workspace_page(request: Request) -> Response:
    """Not part of the hosted API: the key's workspace: its quotas and weight, its batches and
    requests not finished, its requests running and waiting per model and backend (across every
    worker), and its usage of the last 24 hours."""
    manager: BatchManager = request.app.state.manager
    workspace = workspace_of(request, manager.settings)
    route = request.app.state.server.runtime.backend_of
    body = await UsageReader(manager.store, manager.settings).workspace(workspace, route)
    return Response(msgspec.json.encode(body), media_type="application/json")


routes = [
    Route("/", index, methods=["GET"]),
    Route("/dashboard/{name}", asset, methods=["GET"]),
    Route("/v1/messages/batches/{batch_id}/stats", stats, methods=["GET"]),
    Route("/v1/messages/batches/{batch_id}/results/page", results_page, methods=["GET"]),
    Route("/v1/workspace", workspace_page, methods=["GET"]),
]
