"""The machine-readable description of the API: an OpenAPI 3.1 document at `GET /openapi.json`.

Written by hand, as data, in groups: each group (`server_paths`, `message_batches`) returns the
paths it adds and the schemas they name, and `document()` puts the groups together. A new
dialect (OpenAI's `/v1/files` + `/v1/batches`) adds a function like `message_batches` and one
entry in `GROUPS`.

The document promises exactly what the server does, and CI holds it to that:
`tests/acceptance/test_openapi_fuzz.py` drives schemathesis against a real `msgbatch serve` and fails on any
server error or any response outside these schemas (statuses, headers, bodies, content types).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from msgbatch import __version__

Schema = dict[str, Any]
Group = tuple[dict[str, Any], dict[str, Schema]]  # (paths, component schemas)

_ERROR_TYPES = [
    "invalid_request_error",
    "authentication_error",
    "billing_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "timeout_error",
    "api_error",
    "overloaded_error",
]
_WHY = {
    400: "The request is invalid (also: a Host or X-Forwarded-* header that cannot be used).",
    401: "No API key, or an unknown one.",
    403: "`anthropic-workspace-id` names another workspace than the key's.",
    404: "No such batch in this key's workspace (or no results yet).",
    409: "The Idempotency-Key was already used for a different request (or its batch was deleted).",
    408: "The client stopped sending its body (`body_timeout`).",
    413: "The body (decoded) is over the size limit.",
    415: "A `Content-Encoding` other than gzip, deflate or identity.",
    429: "Too many large creates at once (retry after `retry-after` seconds), or a workspace quota "
    "(`[limits]`) would be exceeded.",
    500: "An unexpected failure (a bug: it is logged).",
    503: "The database does not answer (an API call: retry after `retry-after` seconds).",
}
_BATCH_ID = {"type": "string", "pattern": "^msgbatch_[0-9A-Za-z]{24}$"}
# A boolean query flag as the server reads it: true/false in any case, 1/0, or empty (the default).
FLAG = {"type": "string", "pattern": "^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|1|0)?$"}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$"},
    "description": "Not in the hosted API: the same key with the same body within 24 h gives back the same "
    "batch (per workspace); with another body, 409.",
}
METADATA = {
    "type": "object",
    "maxProperties": 16,
    "propertyNames": {"minLength": 1, "maxLength": 64},
    "additionalProperties": {"type": "string", "maxLength": 512},
}
FAIL_FAST = {
    "type": "object",
    "additionalProperties": False,
    "required": ["min_results", "max_error_rate"],
    "properties": {
        "min_results": {"type": "integer", "minimum": 1},
        "max_error_rate": {"type": "number", "minimum": 0, "maximum": 1},
    },
}
_REQUEST_ID_HEADER = {
    "description": "This request's id (error bodies repeat it).",
    "required": True,
    "schema": {"type": "string", "pattern": "^req_[0-9A-Za-z]+$"},
}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    return {**schema, "type": [schema["type"], "null"]}


def response(description: str, schema: Schema | None = None, media_type: str = "application/json") -> Schema:
    answer: Schema = {"description": description, "headers": {"request-id": _REQUEST_ID_HEADER}}
    if schema is not None:
        answer["content"] = {media_type: {"schema": schema}}
    return answer


def errors(*statuses: int, shape: str = "ErrorResponse") -> dict[str, Schema]:
    """The error answers an operation can give (every one in its API's error shape)."""
    answers = {str(status): response(_WHY[status], ref(shape)) for status in statuses}
    for status, required in ((429, True), (503, False)):
        if status in statuses:
            answers[str(status)]["headers"] = {
                **answers[str(status)]["headers"],
                "retry-after": {"required": required, "schema": {"type": "string", "pattern": "^[0-9]+$"}},
            }
    return answers


def operation(
    operation_id: str,
    summary: str,
    ok: Schema,
    error_statuses: tuple[int, ...],
    *,
    parameters: list[Schema] | None = None,
    body: Schema | None = None,
    authenticated: bool = True,
    error_shape: str = "ErrorResponse",
) -> Schema:
    op: Schema = {
        "operationId": operation_id,
        "summary": summary,
        "responses": {"200": ok, **errors(*error_statuses, shape=error_shape)},
    }
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = body
    if not authenticated:
        op["security"] = []
    return op


def query(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


# -- groups ----------------------------------------------------------------------------------


def server_paths() -> Group:
    status: Callable[[str], Schema] = lambda value: {  # noqa: E731
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"const": value}},
        "additionalProperties": False,
    }
    paths = {
        "/health": {"get": operation("health", "Liveness", response("Alive.", status("ok")), (), authenticated=False)},
        "/ready": {
            "get": operation(
                "ready",
                "Readiness: the database answers",
                response("Ready.", status("ready")),
                (503,),
                authenticated=False,
            )
        },
        "/metrics": {
            "get": operation(
                "metrics",
                "Prometheus metrics of this process",
                response("Prometheus text format.", {"type": "string"}, "text/plain"),
                (),
                authenticated=False,
            )
        },
        "/openapi.json": {
            "get": operation(
                "openapi", "This document", response("OpenAPI 3.1.", {"type": "object"}), (400,), authenticated=False
            )
        },
    }
    return paths, {}


def message_batches() -> Group:
    """The Anthropic Message Batches API (`?beta=true` is the same routes)."""
    batch_id = {
        "name": "batch_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "A Message Batch ID (`msgbatch_` + 24 characters); anything else is 404.",
    }
    cursor = {"type": "string", "pattern": "^(msgbatch_[0-9A-Za-z]{24})?$", "description": "Empty: none."}
    beta = query("beta", {"type": "string"}, "Sent by older SDKs (`beta=true`); accepted and ignored.")
    common = (400, 401, 403, 500, 503)
    with_id = (400, 401, 403, 404, 500, 503)
    batch = response("The batch.", ref("MessageBatch"))
    create_body = {
        "required": True,
        "content": {"application/json": {"schema": ref("CreateMessageBatchParams")}},
        "description": "May be sent with `Content-Encoding: gzip` or `deflate`; the size limit applies to "
        "the decoded body.",
    }
    created = response("The batch (an Idempotency-Key's earlier batch says so in `idempotent-replayed`).",
                        ref("MessageBatch"))  # fmt: skip
    created["headers"]["idempotent-replayed"] = {"required": False, "schema": {"const": "true"}}
    paths = {
        "/v1/messages/batches": {
            "post": operation(
                "createMessageBatch",
                "Create a batch",
                created,
                (400, 401, 403, 408, 409, 413, 415, 429, 500, 503),
                parameters=[beta, IDEMPOTENCY_KEY],
                body=create_body,
            ),
            "get": operation(
                "listMessageBatches",
                "List batches, newest first",
                response("A page of batches.", ref("MessageBatchList")),
                common,
                parameters=[
                    query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 20}, "Page size."),
                    query("after_id", cursor, "The page just older than this batch (not with before_id)."),
                    query("before_id", cursor, "The page just newer than this batch (not with after_id)."),
                    query(
                        "status",
                        {"type": "string", "enum": ["", "in_progress", "canceling", "ended"]},
                        "Not in the hosted API: only batches of this status.",
                    ),
                    beta,
                    {
                        "name": "metadata",
                        "in": "query",
                        "required": False,
                        "style": "deepObject",
                        "explode": True,
                        "schema": {"type": "object", "additionalProperties": {"type": "string"}},
                        "description": "Not in the hosted API: `metadata[KEY]=VALUE`, only the batches whose "
                        "metadata has every pair given.",
                    },
                ],
            ),
        },
        "/v1/messages/batches/{batch_id}": {
            "get": operation("retrieveMessageBatch", "Retrieve a batch", batch, with_id, parameters=[batch_id, beta]),
            "delete": operation(
                "deleteMessageBatch",
                "Delete an ended batch",
                response("Deleted.", ref("DeletedMessageBatch")),
                with_id,
                parameters=[batch_id, beta],
            ),
        },
        "/v1/messages/batches/{batch_id}/cancel": {
            "post": operation(
                "cancelMessageBatch",
                "Cancel a batch",
                batch,
                with_id,
                parameters=[
                    batch_id,
                    beta,
                    query(
                        "abort_running",
                        FLAG,
                        "Not in the hosted API: also stop the requests running now (they end `canceled`). "
                        "Default: the server's `abort_running_on_cancel`.",
                    ),
                ],
            )
        },
        "/v1/messages/batches/{batch_id}/results": {
            "get": operation(
                "messageBatchResults",
                "The results of an ended batch, one JSON object per line",
                response(
                    "`{custom_id, result}` lines (MessageBatchIndividualResponse).",
                    {"type": "string"},
                    "application/x-jsonl",
                ),
                with_id,
                parameters=[
                    batch_id,
                    query(
                        "type",
                        {"type": "string", "enum": ["succeeded", "errored", "canceled", "expired"]},
                        "Not in the hosted API: only results of this type.",
                    ),
                    query("custom_id", {"type": "string"}, "Not in the hosted API: only this request's result."),
                    query(
                        "partial",
                        FLAG,
                        "Not in the hosted API: the results written so far of a batch still running.",
                    ),
                ],
            )
        },
        "/v1/messages/batches/{batch_id}/stats": {
            "get": operation(
                "messageBatchStats",
                "Not in the hosted API: where this batch's requests spent their time, per backend",
                response("Timings measured by this process since it started.", ref("MessageBatchStats")),
                with_id,
                parameters=[batch_id],
            )
        },
    }
    time = {"type": "string", "format": "date-time"}
    count = {"type": "integer", "minimum": 0}
    schemas: dict[str, Schema] = {
        "CreateMessageBatchParams": {
            "type": "object",
            "required": ["requests"],
            "properties": {
                "requests": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 100_000,
                    "items": {
                        "type": "object",
                        "required": ["custom_id", "params"],
                        "properties": {
                            "custom_id": {
                                "type": "string",
                                "pattern": "^[a-zA-Z0-9_-]{1,64}$",
                                "description": "Unique within the batch.",
                            },
                            "params": {
                                "type": "object",
                                "description": "Messages API parameters (model, max_tokens, messages, ...). "
                                "Checked when the request runs: a bad one becomes an `errored` result.",
                            },
                        },
                    },
                },
                # Not in the hosted API (null: not given).
                "metadata": {**nullable(METADATA), "description": "Up to 16 string pairs."},
                "fail_fast": {
                    **nullable(FAIL_FAST),
                    "description": "Cancel (stopping running requests) once `min_results` results are in and "
                    "more than `max_error_rate` of them errored.",
                },
                "webhook_url": {
                    "type": ["string", "null"],
                    "maxLength": 2048,
                    "description": "Signed webhooks go here; it must be under a prefix the server allows.",
                },
                "priority": {
                    "enum": ["high", "normal", "low", None],
                    "description": "Not in the hosted API: the batch's priority within its workspace (default normal).",
                },
            },
        },
        "MessageBatch": {
            "type": "object",
            "additionalProperties": False,
            "required": [
                "id",
                "type",
                "processing_status",
                "request_counts",
                "created_at",
                "expires_at",
                "ended_at",
                "cancel_initiated_at",
                "archived_at",
                "results_url",
            ],
            "properties": {
                "id": _BATCH_ID,
                "type": {"const": "message_batch"},
                "processing_status": {"enum": ["in_progress", "canceling", "ended"]},
                "request_counts": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["processing", "succeeded", "errored", "canceled", "expired"],
                    "properties": {k: count for k in ("processing", "succeeded", "errored", "canceled", "expired")},
                },
                "created_at": time,
                "expires_at": time,
                "ended_at": nullable(time),
                "cancel_initiated_at": nullable(time),
                "archived_at": nullable(time),
                "results_url": nullable({"type": "string", "format": "uri"}),
                # Not in the hosted API: the succeeded requests' tokens so far, once there are some.
                "usage": ref("Tokens"),
                # Not in the hosted API: present only on a batch that uses the feature.
                "metadata": METADATA,
                "fail_fast": FAIL_FAST,
                "webhook_url": {"type": "string"},
                "retry_of": _BATCH_ID,
                "retried_by": _BATCH_ID,
                "cancel_reason": {"enum": ["fail_fast"]},
                "priority": {"enum": ["high", "low"], "description": "Present when not normal."},
            },
        },
        "MessageBatchList": {
            "type": "object",
            "additionalProperties": False,
            "required": ["data", "has_more", "first_id", "last_id"],
            "properties": {
                "data": {"type": "array", "items": ref("MessageBatch")},
                "has_more": {"type": "boolean"},
                "first_id": nullable({"type": "string"}),
                "last_id": nullable({"type": "string"}),
            },
        },
        "DeletedMessageBatch": {
            "type": "object",
            "additionalProperties": False,
            "required": ["id", "type"],
            "properties": {"id": {"type": "string"}, "type": {"const": "message_batch_deleted"}},
        },
        "MessageBatchStats": {
            "type": "object",
            "additionalProperties": False,
            "required": [
                "id",
                "type",
                "since",
                "first_call_at",
                "last_call_at",
                "backends",
                "requests",
                "errors",
                "tokens",
                "usage",
                "cost",
                "throughput",
            ],
            "properties": {
                "id": {"type": "string"},
                "type": {"const": "message_batch_stats"},
                "since": time,
                "first_call_at": nullable(time),
                "last_call_at": nullable(time),
                "backends": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["backend", "calls", "errors", "total_seconds", "mean_seconds", "max_seconds"],
                        "properties": {
                            "backend": {"type": "string"},
                            "calls": count,
                            "errors": count,
                            "total_seconds": {"type": "number"},
                            "mean_seconds": {"type": ["number", "null"]},
                            "max_seconds": {"type": "number"},
                        },
                    },
                },
                "requests": {
                    "type": "array",
                    "description": "By model and backend (null: none yet, or none ever): they add up to the "
                    "batch's request_counts.",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["model", "backend", "processing", "succeeded", "errored", "canceled", "expired"],
                        "properties": {
                            "model": {"type": "string"},
                            "backend": nullable({"type": "string"}),
                            **{k: count for k in ("processing", "succeeded", "errored", "canceled", "expired")},
                        },
                    },
                },
                "errors": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["type", "count"],
                        "properties": {"type": {"type": "string"}, "count": count},
                    },
                },
                "tokens": {"type": "array", "items": ref("UsageEntry")},
                "usage": ref("Tokens"),
                "cost": nullable({"type": "number"}),
                "throughput": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["step_seconds", "start", "points"],
                    "properties": {
                        "step_seconds": {"type": "integer", "minimum": 1},
                        "start": {"type": "integer"},
                        "points": {
                            "type": "array",
                            "description": "[unix seconds, requests written in that step]",
                            "items": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
                        },
                    },
                },
            },
        },
    }
    return paths, schemas


def teams() -> Group:
    """msgbatch's own endpoints for many teams: usage, the workspace, pages of results."""
    common = (400, 401, 403, 500, 503)
    time = {"type": "string", "format": "date-time"}
    count = {"type": "integer", "minimum": 0}
    moment = {
        "anyOf": [
            {"type": "string", "format": "date-time"},
            {"type": "string", "format": "date"},
            {"type": "string", "pattern": "^[0-9]{1,15}$"},
            {"const": ""},
        ],
        "description": "RFC 3339, a date, or unix seconds; outside 1970 to 9999, the nearer end; empty: the default.",
    }
    paths = {
        "/v1/usage": {
            "get": operation(
                "usage",
                "Not in the hosted API: the workspace's token usage over a time range",
                response("Usage per group and in total.", ref("Usage")),
                common,
                parameters=[
                    query("since", moment, "From this time (default: 30 days before `until`)."),
                    query("until", moment, "Up to this time (default: now)."),
                    query(
                        "group_by",
                        {"type": "string", "pattern": "^((model|hour|day)(,(model|hour|day))*)?$"},
                        "Any of `model`, `hour`, `day`, comma-separated (with both, `hour`).",
                    ),
                ],
            )
        },
        "/v1/workspace": {
            "get": operation(
                "workspace",
                "Not in the hosted API: the key's workspace: quotas, open work, usage of the last day",
                response("The workspace.", ref("Workspace")),
                common,
            )
        },
        "/v1/messages/batches/{batch_id}/results/page": {
            "get": operation(
                "messageBatchResultsPage",
                "Not in the hosted API: a page of the results written so far",
                response("Results lines and where the next page starts.", ref("ResultsPage")),
                (400, 401, 403, 404, 500, 503),
                parameters=[
                    {"name": "batch_id", "in": "path", "required": True, "schema": {"type": "string"}},
                    query(
                        "after",
                        {"type": "integer", "minimum": 0, "maximum": 1 << 40},
                        "The position in the batch to start from.",
                    ),
                    query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "Page size (100)."),
                    query("type", {"type": "string", "enum": ["succeeded", "errored", "canceled", "expired"]}, ""),
                    query("custom_id", {"type": "string"}, "Only this request's result."),
                ],
            )
        },
    }
    tokens = {
        k: count for k in ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    }
    entry = {"succeeded": count, "errored": count, **tokens, "cost": nullable({"type": "number"})}
    schemas: dict[str, Schema] = {
        "Tokens": {"type": "object", "additionalProperties": False, "required": list(tokens), "properties": tokens},
        "UsageEntry": {
            "type": "object",
            "additionalProperties": False,
            "required": list(entry),
            "properties": {**entry, "model": {"type": "string"}, "start": time},
        },
        "Usage": {
            "type": "object",
            "additionalProperties": False,
            "required": ["type", "workspace", "since", "until", "group_by", "data", "total"],
            "properties": {
                "type": {"const": "usage"},
                "workspace": {"type": "string"},
                "since": time,
                "until": time,
                "group_by": {"type": "array", "items": {"enum": ["model", "hour", "day"]}},
                "data": {"type": "array", "items": ref("UsageEntry")},
                "total": ref("UsageEntry"),
            },
        },
        "Workspace": {
            "type": "object",
            "additionalProperties": False,
            "required": ["type", "workspace", "limits", "batches_in_progress", "queued_requests", "work", "usage_24h"],
            "properties": {
                "type": {"const": "workspace"},
                "workspace": {"type": "string"},
                "limits": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": [
                        "max_queued_requests",
                        "max_batches_in_progress",
                        "max_in_flight_per_backend",
                        "weight",
                    ],
                    "properties": {
                        "max_queued_requests": nullable(count),
                        "max_batches_in_progress": nullable(count),
                        "max_in_flight_per_backend": nullable(count),
                        "weight": {"type": "number"},
                    },
                },
                "batches_in_progress": count,
                "queued_requests": count,
                "work": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["model", "backend", "running", "waiting"],
                        "properties": {
                            "model": {"type": "string"},
                            "backend": nullable({"type": "string"}),
                            "running": count,
                            "waiting": count,
                        },
                    },
                },
                "usage_24h": ref("Usage"),
            },
        },
        "ResultsPage": {
            "type": "object",
            "additionalProperties": False,
            "required": ["data", "next"],
            "properties": {
                "data": {"type": "array", "items": {"type": "object"}},
                "next": nullable({"type": "integer", "minimum": 0}),
            },
        },
    }
    return paths, schemas


def batch_features() -> Group:
    """Not in the hosted API: the retry of failed lines, and webhook deliveries."""
    with_id = (400, 401, 403, 404, 500, 503)
    retry_body = {
        "required": False,
        "content": {"application/json": {"schema": ref("RetryMessageBatchParams")}},
        "description": "Which lines to run again; none: errored and expired ones.",
    }
    time = {"type": "string", "format": "date-time"}
    delivery_id = {"type": "string", "pattern": "^whdel_[0-9]{1,18}$"}
    paths = {
        "/v1/messages/batches/{batch_id}/retry": {
            "post": operation(
                "retryMessageBatch",
                "A new batch of an ended batch's failed lines (`retry_of` it)",
                response("The new batch.", ref("MessageBatch")),
                (400, 401, 403, 404, 408, 409, 413, 415, 429, 500, 503),
                parameters=[
                    {"name": "batch_id", "in": "path", "required": True, "schema": {"type": "string"}},
                    IDEMPOTENCY_KEY,
                ],
                body=retry_body,
            )
        },
        "/v1/webhooks/deliveries": {
            "get": operation(
                "listWebhookDeliveries",
                "The workspace's webhook deliveries, newest first",
                response("A page of deliveries.", ref("WebhookDeliveryList")),
                (400, 401, 403, 500, 503),
                parameters=[
                    query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 20}, "Page size."),
                    query(
                        "after_id", {"type": "string", "pattern": "^(whdel_[0-9]{1,18})?$"}, "The page after this one."
                    ),
                    query("batch_id", {"type": "string"}, "Only this batch's deliveries."),
                    query("status", {"enum": ["pending", "delivered", "failed"]}, "Only those in this state."),
                ],
            )
        },
        "/v1/webhooks/deliveries/{delivery_id}/redeliver": {
            "post": operation(
                "redeliverWebhook",
                "Send a delivery again now, with a fresh retry window",
                response("The delivery, pending.", ref("WebhookDelivery")),
                with_id,
                parameters=[{"name": "delivery_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            )
        },
    }
    schemas: dict[str, Schema] = {
        "RetryMessageBatchParams": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "result_types": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"enum": ["succeeded", "errored", "canceled", "expired"]},
                },
                "error_types": {"type": "array", "items": {"type": "string", "minLength": 1}},
            },
        },
        "WebhookDelivery": {
            "type": "object",
            "additionalProperties": False,
            "required": [
                "id",
                "type",
                "batch_id",
                "event",
                "event_at",
                "url",
                "source",
                "status",
                "attempts",
                "created_at",
                "next_attempt_at",
                "delivered_at",
                "last_status_code",
                "last_error",
            ],
            "properties": {
                "id": delivery_id,
                "type": {"const": "webhook_delivery"},
                "batch_id": {"type": "string"},
                "event": {"enum": ["message_batch.ended", "message_batch.canceling"]},
                "event_at": nullable(time),
                "url": {"type": "string"},
                "source": {"enum": ["config", "batch"]},
                "status": {"enum": ["pending", "delivered", "failed"]},
                "attempts": {"type": "integer", "minimum": 0},
                "created_at": time,
                "next_attempt_at": nullable(time),
                "delivered_at": nullable(time),
                "last_status_code": {"type": ["integer", "null"]},
                "last_error": {"type": ["string", "null"]},
            },
        },
        "WebhookDeliveryList": {
            "type": "object",
            "additionalProperties": False,
            "required": ["data", "has_more", "first_id", "last_id"],
            "properties": {
                "data": {"type": "array", "items": ref("WebhookDelivery")},
                "has_more": {"type": "boolean"},
                "first_id": nullable({"type": "string"}),
                "last_id": nullable({"type": "string"}),
            },
        },
    }
    return paths, schemas


def openai_batches() -> Group:
    """The OpenAI Batch API: `/v1/files` and `/v1/batches` (its errors have OpenAI's error body)."""
    file_id = {
        "name": "file_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "An uploaded file's id, or a batch's output or error file's.",
    }
    batch_id = {
        "name": "batch_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "A batch id (`batch_` + 24 characters); anything else is 404.",
    }

    def op(operation_id: str, summary: str, ok: Schema, statuses: tuple[int, ...], **kwargs: Any) -> Schema:
        return operation(operation_id, summary, ok, statuses, error_shape="OpenAIErrorResponse", **kwargs)

    with_id = (400, 401, 403, 404, 500, 503)
    batch = response("The batch.", ref("OpenAIBatch"))
    upload = {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "A .jsonl file."},
                        "purpose": {"enum": ["batch"]},
                        "expires_after[anchor]": {"enum": ["created_at"]},
                        "expires_after[seconds]": {"type": "integer", "minimum": 3600, "maximum": 2_592_000},
                    },
                }
            }
        },
    }
    paths = {
        "/v1/files": {
            "post": op(
                "uploadFile",
                "Upload a batch input file (JSONL), at most `max_file_bytes`",
                response("The file.", ref("OpenAIFile")),
                (400, 401, 403, 408, 500, 503),
                body=upload,
            ),
            "get": op(
                "listFiles",
                "List the workspace's files: uploads, and batches' output and error files",
                response("A page of files.", ref("OpenAIFileList")),
                (400, 401, 403, 404, 500, 503),
                parameters=[
                    query("purpose", {"type": "string"}, "Only files of this purpose (`batch`, `batch_output`)."),
                    query(
                        "limit", {"type": "integer", "minimum": 1, "maximum": 10_000, "default": 10_000}, "Page size."
                    ),
                    query("after", {"type": "string"}, "A file of the workspace: the page after it (404 if none)."),
                    query("order", {"enum": ["asc", "desc"], "default": "desc"}, "By created_at."),
                ],
            ),
        },
        "/v1/files/{file_id}": {
            "get": op(
                "retrieveFile",
                "Retrieve a file",
                response("The file.", ref("OpenAIFile")),
                with_id,
                parameters=[file_id],
            ),
            "delete": op(
                "deleteFile",
                "Delete a file",
                response("Deleted.", ref("OpenAIFileDeleted")),
                with_id,
                parameters=[file_id],
            ),
        },
        "/v1/files/{file_id}/content": {
            "get": op(
                "fileContent",
                "A file's content (an output or error file: its JSONL lines)",
                response("The content.", {"type": "string"}, "application/octet-stream"),
                with_id,
                parameters=[file_id],
            )
        },
        "/v1/batches": {
            "post": op(
                "createBatch",
                "Create a batch from an uploaded file",
                batch,
                (400, 401, 403, 404, 408, 413, 415, 429, 500, 503),
                body={"required": True, "content": {"application/json": {"schema": ref("CreateOpenAIBatchParams")}}},
            ),
            "get": op(
                "listBatches",
                "List batches, newest first",
                response("A page of batches.", ref("OpenAIBatchList")),
                (400, 401, 403, 500, 503),
                parameters=[
                    query("limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}, "Page size."),
                    query("after", {"type": "string"}, "The page just older than this batch."),
                ],
            ),
        },
        "/v1/batches/{batch_id}": {
            "get": op("retrieveBatch", "Retrieve a batch", batch, with_id, parameters=[batch_id])
        },
        "/v1/batches/{batch_id}/cancel": {
            "post": op("cancelBatch", "Cancel a batch", batch, with_id, parameters=[batch_id])
        },
    }
    seconds = {"type": "integer", "minimum": 0}
    maybe_seconds = {"type": ["integer", "null"], "minimum": 0}
    count = {"type": "integer", "minimum": 0}
    text = {"type": "string"}
    maybe_text = {"type": ["string", "null"]}
    file_object: Schema = {
        "type": "object",
        "additionalProperties": False,
        "required": [
            "id",
            "object",
            "bytes",
            "created_at",
            "filename",
            "purpose",
            "status",
            "expires_at",
            "status_details",
        ],
        "properties": {
            "id": text,
            "object": {"const": "file"},
            "bytes": count,
            "created_at": seconds,
            "filename": text,
            "purpose": {"enum": ["batch", "batch_output"]},
            "status": {"const": "processed"},
            "expires_at": maybe_seconds,
            "status_details": {"type": "null"},
        },
    }
    times = ["created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at"]
    times += ["expired_at", "cancelling_at", "cancelled_at"]
    schemas: dict[str, Schema] = {
        "OpenAIErrorResponse": {
            "type": "object",
            "additionalProperties": False,
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["message", "type", "param", "code"],
                    "properties": {"message": text, "type": text, "param": maybe_text, "code": maybe_text},
                }
            },
        },
        "OpenAIFile": file_object,
        "OpenAIFileList": {
            "type": "object",
            "additionalProperties": False,
            "required": ["object", "data", "first_id", "last_id", "has_more"],
            "properties": {
                "object": {"const": "list"},
                "data": {"type": "array", "items": ref("OpenAIFile")},
                "first_id": maybe_text,
                "last_id": maybe_text,
                "has_more": {"type": "boolean"},
            },
        },
        "OpenAIFileDeleted": {
            "type": "object",
            "additionalProperties": False,
            "required": ["id", "object", "deleted"],
            "properties": {"id": text, "object": {"const": "file"}, "deleted": {"const": True}},
        },
        "CreateOpenAIBatchParams": {
            "type": "object",
            "required": ["input_file_id", "endpoint", "completion_window"],
            "properties": {
                "input_file_id": text,
                "endpoint": {"enum": ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]},
                "completion_window": {"enum": ["24h"]},
                "metadata": {
                    "type": ["object", "null"],
                    "maxProperties": 16,
                    "propertyNames": {"maxLength": 64},
                    "additionalProperties": {"type": "string", "maxLength": 512},
                },
                "output_expires_after": {
                    "type": "object",
                    "required": ["anchor", "seconds"],
                    "properties": {
                        "anchor": {"const": "created_at"},
                        "seconds": {"type": "integer", "minimum": 3600, "maximum": 2_592_000},
                    },
                },
            },
        },
        "OpenAIBatch": {
            "type": "object",
            "additionalProperties": False,
            "required": [
                "id",
                "object",
                "endpoint",
                "model",
                "errors",
                "input_file_id",
                "completion_window",
                "status",
                "output_file_id",
                "error_file_id",
                *times,
                "request_counts",
                "usage",
                "metadata",
            ],
            "properties": {
                "id": {"type": "string", "pattern": "^batch_[0-9A-Za-z]{24}$"},
                "object": {"const": "batch"},
                "endpoint": text,
                "model": {"type": "null"},
                "errors": {
                    "type": ["object", "null"],
                    "additionalProperties": False,
                    "required": ["object", "data"],
                    "properties": {
                        "object": {"const": "list"},
                        "data": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["code", "message", "param", "line"],
                                "properties": {
                                    "code": text,
                                    "message": text,
                                    "param": maybe_text,
                                    "line": maybe_seconds,
                                },
                            },
                        },
                    },
                },
                "input_file_id": text,
                "completion_window": text,
                "status": {
                    "enum": [
                        "validating",
                        "failed",
                        "in_progress",
                        "finalizing",
                        "completed",
                        "expired",
                        "cancelling",
                        "cancelled",
                    ]
                },
                "output_file_id": maybe_text,
                "error_file_id": maybe_text,
                **{name: seconds if name in ("created_at", "expires_at") else maybe_seconds for name in times},
                "request_counts": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["total", "completed", "failed"],
                    "properties": {"total": count, "completed": count, "failed": count},
                },
                "usage": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": [
                        "input_tokens",
                        "input_tokens_details",
                        "output_tokens",
                        "output_tokens_details",
                        "total_tokens",
                    ],
                    "properties": {
                        "input_tokens": count,
                        "input_tokens_details": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["cached_tokens"],
                            "properties": {"cached_tokens": count},
                        },
                        "output_tokens": count,
                        "output_tokens_details": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["reasoning_tokens"],
                            "properties": {"reasoning_tokens": count},
                        },
                        "total_tokens": count,
                    },
                },
                "metadata": {"type": ["object", "null"], "additionalProperties": {"type": "string"}},
            },
        },
        "OpenAIBatchList": {
            "type": "object",
            "additionalProperties": False,
            "required": ["object", "data", "first_id", "last_id", "has_more"],
            "properties": {
                "object": {"const": "list"},
                "data": {"type": "array", "items": ref("OpenAIBatch")},
                "first_id": maybe_text,
                "last_id": maybe_text,
                "has_more": {"type": "boolean"},
            },
        },
    }
    return paths, schemas


GROUPS: list[Callable[[], Group]] = [server_paths, message_batches, batch_features, openai_batches, teams]


def document() -> Schema:
    paths: dict[str, Any] = {}
    schemas: dict[str, Schema] = {
        "ErrorResponse": {
            "type": "object",
            "additionalProperties": False,
            "required": ["type", "error", "request_id"],
            "properties": {
                "type": {"const": "error"},
                "error": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["type", "message"],
                    "properties": {"type": {"enum": _ERROR_TYPES}, "message": {"type": "string"}},
                },
                "request_id": {"type": "string", "pattern": "^req_[0-9A-Za-z]+$"},
            },
        }
    }
    for group in GROUPS:
        group_paths, group_schemas = group()
        for path, operations in group_paths.items():
            paths.setdefault(path, {}).update(operations)
        schemas.update(group_schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "msgbatch",
            "version": __version__,
            "description": "A self-hosted, drop-in Message Batches API and OpenAI Batch API. Every response "
            "carries a `request-id` header; every error has its API's body: `{type: error, error: {type, "
            "message}, request_id}`, or on `/v1/files` and `/v1/batches` `{error: {message, type, param, code}}`.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
                "Bearer": {"type": "http", "scheme": "bearer"},
            },
        },
        "security": [{"ApiKey": []}, {"Bearer": []}],
    }


@functools.cache
def _encoded() -> bytes:
    return msgspec.json.encode(document())


async def openapi_json(request: Request) -> Response:
    return Response(_encoded(), media_type="application/json")


routes = [Route("/openapi.json", openapi_json, methods=["GET"])]
