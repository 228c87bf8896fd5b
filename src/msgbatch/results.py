"""The results lines, as stored and served: the one place that knows their format.

A line is `{"custom_id": ..., "result": ...}`, made once when the request finishes and streamed
as stored. The store's SQL makes the `canceled` and `expired` lines of requests it finishes in
bulk; tests hold those byte-identical to `canceled_line` and `expired_line` here.
"""

from __future__ import annotations

from typing import Any

import msgspec

from msgbatch.errors import RESULT_ERROR_TYPES, error_body
from msgbatch.ids import new_request_id
from msgbatch.models import NO_TOKENS

__all__ = ["canceled_line", "errored_line", "expired_line", "succeeded_line", "tokens_of"]

_encode = msgspec.json.encode


def _line(custom_id: str, result: bytes) -> bytes:
    # custom_id matched ^[a-zA-Z0-9_-]{1,64}$ at create: no escaping needed.
    return b'{"custom_id":"' + custom_id.encode() + b'","result":' + result + b"}"


def succeeded_line(custom_id: str, message: dict[str, Any]) -> bytes:
    return _line(custom_id, b'{"type":"succeeded","message":' + _encode(message) + b"}")


def errored_line(custom_id: str, error_type: str, message: str) -> bytes:
    if error_type not in RESULT_ERROR_TYPES:
        # An HTTP-only type (request_too_large) would fail the SDK's validation of the line.
        error_type = "invalid_request_error" if error_type == "request_too_large" else "api_error"
    envelope = error_body(error_type, message, new_request_id())
    # The spec documents' examples read `result.error.message`; the SDK's ErrorResponse keeps the
    # message one level down but allows extra keys, so repeating it there makes both spellings work.
    envelope = envelope[:-1] + b',"message":' + _encode(message) + b"}"
    return _line(custom_id, b'{"type":"errored","error":' + envelope + b"}")


def canceled_line(custom_id: str) -> bytes:
    return _line(custom_id, b'{"type":"canceled"}')


def expired_line(custom_id: str) -> bytes:
    return _line(custom_id, b'{"type":"expired"}')


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def tokens_of(message: dict[str, Any]) -> tuple[int, int, int, int]:
    """A Message's usage as counted for its batch: input, output, cache read, cache creation."""
    usage = message.get("usage")
    if not isinstance(usage, dict):
        return NO_TOKENS
    return (
        _count(usage.get("input_tokens")),
        _count(usage.get("output_tokens")),
        _count(usage.get("cache_read_input_tokens")),
        _count(usage.get("cache_creation_input_tokens")),
    )
