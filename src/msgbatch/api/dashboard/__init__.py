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
from msgbatch.errors import NotFoundError
from msgbatch.manager import BatchManager
from msgbatch.metrics import Metrics

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
    """Not part of the hosted API: where a batch's requests spent their time, per backend.

    Measured in memory by this process's dispatcher, since the process started.
    """
    manager: BatchManager = request.app.state.manager
    metrics: Metrics = request.app.state.metrics
    workspace = workspace_of(request, manager.settings)
    batch = await manager.get(workspace, batch_id_of(request))
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
    }
    return Response(msgspec.json.encode(body), media_type="application/json")


routes = [
    Route("/", index, methods=["GET"]),
    Route("/dashboard/{name}", asset, methods=["GET"]),
    Route("/v1/messages/batches/{batch_id}/stats", stats, methods=["GET"]),
]
