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

__all__ = ["canceled_line", "errored_line", "expired_line", "succeeded_line"]

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
