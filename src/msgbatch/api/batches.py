"""The /v1/messages/batches endpoints. `?beta=true` is accepted everywhere and changes nothing.

Beyond the hosted API (README: "Beyond the hosted API"): an `Idempotency-Key` header on create,
`?metadata[KEY]=VALUE` on list, `?abort_running=` on cancel, `?partial=true` on results.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from msgbatch.api.auth import workspace_of
from msgbatch.api.body import create_body
from msgbatch.api.forwarded import Origin
from msgbatch.envelope import parse_betas
from msgbatch.errors import InvalidRequestError, NotFoundError
from msgbatch.ids import is_batch_id
from msgbatch.manager import NOT_FOUND, BatchManager
from msgbatch.models import RESULT_CODES, STATUS_NAMES, Batch

JSON = "application/json"
_INTEGER = re.compile(r"-?[0-9]{1,18}", re.ASCII)
# Request headers that belong to every request of a batch: kept with it, forwarded to backends.
FORWARDED_HEADERS = ("anthropic-version", "anthropic-user-profile-id")


def _manager(request: Request) -> BatchManager:
    manager: BatchManager = request.app.state.manager
    return manager


def base_url(request: Request) -> str:
    """Where this client reached us, so that results_url brings the SDK back here (api/forwarded.py)."""
    origin: Origin = request.scope["state"]["origin"]
    return origin.base_url


def batch_id_of(request: Request) -> str:
    """The path's batch id; one that cannot be an id is not looked up (any string could reach the store)."""
    batch_id: str = request.path_params["batch_id"]
    if not is_batch_id(batch_id):
        raise NotFoundError(NOT_FOUND)
    return batch_id


def _cursor(request: Request, name: str) -> str | None:
    value = request.query_params.get(name) or None
    if value is not None and not is_batch_id(value):
        raise InvalidRequestError(f"{name}: Input should be a Message Batch ID (msgbatch_...)")
    return value


def _json(value: object, status: int = 200) -> Response:
    return Response(msgspec.json.encode(value), status_code=status, media_type=JSON)


async def create(request: Request) -> Response:
    manager = _manager(request)
    workspace = workspace_of(request, manager.settings)
    headers = {name: value for name in FORWARDED_HEADERS if (value := request.headers.get(name))}
    betas = parse_betas(request.headers.getlist("anthropic-beta"))
    key = request.headers.get("idempotency-key")
    async with create_body(request, manager.settings, request.app.state.create_budget) as body:
        batch, replayed = await manager.create_once(workspace, body, betas, headers, idempotency_key=key)
        size = len(body)
    return created(request, manager, batch, replayed, size)


def created(request: Request, manager: BatchManager, batch: Batch, replayed: bool, size: int) -> Response:
    """A new batch's answer; one an Idempotency-Key gave back says so in a header."""
    metrics = request.app.state.metrics
    if replayed:
        metrics.idempotent_replays.inc()
    else:
        metrics.batch_created(batch, size)
    response = _json(manager.render(batch, base_url(request)))
    if replayed:
        response.headers["idempotent-replayed"] = "true"
    return response


def bool_param(request: Request, name: str, default: bool = False) -> bool:
    value = request.query_params.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise InvalidRequestError(f"{name}: Input should be a valid boolean, unable to interpret input")


def metadata_filter(request: Request) -> dict[str, str] | None:
    """`?metadata[team]=search&metadata[env]=prod` -> {"team": "search", "env": "prod"}."""
    found: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name.startswith("metadata[") and name.endswith("]"):
            found[name[len("metadata[") : -1]] = value
        elif name.startswith("metadata"):
            raise InvalidRequestError(f"{name}: filter by metadata as metadata[KEY]=VALUE")
    return found or None


def _int_param(request: Request, name: str, default: int) -> int:
    value = request.query_params.get(name)
    if value is None:
        return default
    # int() would also take " 5", "1_0" and non-ASCII digits.
    if not _INTEGER.fullmatch(value):
        raise InvalidRequestError(f"{name}: Input should be a valid integer, unable to parse string as an integer")
    return int(value)


def status_filter(request: Request) -> int | None:
    """Not part of the hosted API, for the dashboard: `?status=ended` lists only ended batches."""
    status = request.query_params.get("status")
    if not status:
        return None
    if status not in STATUS_NAMES:
        raise InvalidRequestError(f"status: Input should be one of {', '.join(STATUS_NAMES)}")
    return STATUS_NAMES.index(status)


async def list_batches(request: Request) -> Response:
    manager = _manager(request)
    workspace = workspace_of(request, manager.settings)
    params = request.query_params
    after_id: str | None
    before_id: str | None
    if params.get("after_id") and params.get("before_id"):
        after_id, before_id = params["after_id"], params["before_id"]  # the manager refuses both at once
    else:
        after_id, before_id = _cursor(request, "after_id"), _cursor(request, "before_id")
    batches, more = await manager.list_batches(
        workspace,
        limit=_int_param(request, "limit", 20),
        after_id=after_id,
        before_id=before_id,
        metadata=metadata_filter(request),
        status=status_filter(request),
    )
    base = base_url(request)
    return _json(
        {
            "data": [manager.render(b, base) for b in batches],
            "has_more": more,
            "first_id": batches[0].id if batches else None,
            "last_id": batches[-1].id if batches else None,
        }
    )


async def retrieve(request: Request) -> Response:
    manager = _manager(request)
    workspace = workspace_of(request, manager.settings)
    batch = await manager.get(workspace, batch_id_of(request))
    return _json(manager.render(batch, base_url(request)))


async def cancel(request: Request) -> Response:
    manager = _manager(request)
    workspace = workspace_of(request, manager.settings)
    abort_running = bool_param(request, "abort_running", manager.settings.abort_running_on_cancel)
    batch = await manager.cancel(workspace, batch_id_of(request), abort_running=abort_running)
    return _json(manager.render(batch, base_url(request)))


async def delete(request: Request) -> Response:
    manager = _manager(request)
    workspace = workspace_of(request, manager.settings)
    batch = await manager.delete(workspace, batch_id_of(request))
    return _json({"id": batch.id, "type": "message_batch_deleted"})


async def results(request: Request) -> Response:
    manager = _manager(request)
    workspace = workspace_of(request, manager.settings)
    # Not part of the hosted API: filters for the CLI and the dashboard.
    type_name = request.query_params.get("type")
    result_type = None
    if type_name is not None:
        if type_name not in RESULT_CODES:
            raise InvalidRequestError(f"type: Input should be one of {', '.join(RESULT_CODES)}")
        result_type = RESULT_CODES[type_name]
    pages = await manager.results(
        workspace,
        batch_id_of(request),
        result_type=result_type,
        custom_id=request.query_params.get("custom_id") or None,
        partial=bool_param(request, "partial"),
    )

    counted = request.app.state.metrics.results_bytes

    async def body() -> AsyncIterator[bytes]:
        # One chunk per page of lines: a chunk per line caps any server near 95k lines/s.
        async for lines in pages:
            chunk = b"\n".join(lines) + b"\n"
            counted.inc(amount=len(chunk))
            yield chunk

    return StreamingResponse(body(), media_type="application/x-jsonl")


routes = [
    Route("/v1/messages/batches", create, methods=["POST"]),
    Route("/v1/messages/batches", list_batches, methods=["GET"]),
    Route("/v1/messages/batches/{batch_id}", retrieve, methods=["GET"]),
    Route("/v1/messages/batches/{batch_id}", delete, methods=["DELETE"]),
    Route("/v1/messages/batches/{batch_id}/cancel", cancel, methods=["POST"]),
    Route("/v1/messages/batches/{batch_id}/results", results, methods=["GET"]),
]
