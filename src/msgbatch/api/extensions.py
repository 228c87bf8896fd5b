"""Endpoints beyond the hosted API (README: "Beyond the hosted API"):

POST /v1/messages/batches/{id}/retry                   a new batch of an ended batch's failed lines
GET  /v1/webhooks/deliveries                           the workspace's webhook deliveries
POST /v1/webhooks/deliveries/{id}/redeliver            send one again (a fresh 24 h of retries)
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from msgbatch.api.auth import workspace_of
from msgbatch.api.batches import JSON, _int_param, batch_id_of, created
from msgbatch.api.body import create_body
from msgbatch.clock import now_us
from msgbatch.errors import InvalidRequestError
from msgbatch.manager import BatchManager


def _manager(request: Request) -> BatchManager:
    manager: BatchManager = request.app.state.manager
    return manager


def _strings(body: dict[str, Any], name: str) -> list[str] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidRequestError(f"{name}: Input should be a valid list of strings")
    return value


async def retry(request: Request) -> Response:
    manager = _manager(request)
    workspace = workspace_of(request, manager.settings)
    body: Any = {}
    async with create_body(request, manager.settings, request.app.state.create_budget) as raw:
        if raw.strip():
            try:
                body = msgspec.json.decode(raw)
            except msgspec.DecodeError as exc:
                raise InvalidRequestError(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("body: Input should be a valid dictionary")
    for name in body:
        if name not in ("result_types", "error_types"):
            raise InvalidRequestError(f"{name}: Extra inputs are not permitted")
    batch, replayed = await manager.retry(
        workspace,
        batch_id_of(request),
        result_types=_strings(body, "result_types"),
        error_types=_strings(body, "error_types"),
        idempotency_key=request.headers.get("idempotency-key"),
    )
    return created(request, manager, batch, replayed, len(raw))


async def list_deliveries(request: Request) -> Response:
    manager = _manager(request)
    workspace = workspace_of(request, manager.settings)
    params = request.query_params
    data, more = await manager.outbox.list(
        workspace,
        limit=_int_param(request, "limit", 20),
        before_id=params.get("after_id") or None,
        batch_id=params.get("batch_id") or None,
        state=params.get("status"),  # an empty one is refused, not ignored
    )
    body = {
        "data": data,
        "has_more": more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
    return Response(msgspec.json.encode(body), media_type=JSON)


async def redeliver(request: Request) -> Response:
    manager = _manager(request)
    workspace = workspace_of(request, manager.settings)
    delivery = await manager.outbox.redeliver(workspace, request.path_params["delivery_id"], now_us())
    for wake in manager.on_announced:
        wake()
    return Response(msgspec.json.encode(delivery), media_type=JSON)


routes = [
    Route("/v1/messages/batches/{batch_id}/retry", retry, methods=["POST"]),
    Route("/v1/webhooks/deliveries", list_deliveries, methods=["GET"]),
    Route("/v1/webhooks/deliveries/{delivery_id}/redeliver", redeliver, methods=["POST"]),
]
