"""The results lines, as stored and served: the one place that knows their formats.

A Message Batch's line is `{"custom_id": ..., "result": ...}`, made once when the request
finishes and streamed as stored. The store's SQL makes the `canceled` and `expired` lines of
requests it finishes in bulk; tests hold those byte-identical to `canceled_line` and
`expired_line` here (a custom_id is JSON-quoted on both sides: free-form in OpenAI batches).

An OpenAI batch's requests end up in its output file (succeeded) or its error file (the others),
one line each, `{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`.
Its succeeded and errored lines are stored in that format as they are made
(`openai_succeeded_line`, `openai_errored_line`); its canceled and expired lines are the
dialect-neutral ones above, which the error file turns into OpenAI lines as it streams them
(`openai_bulk_line`: a splice, no parsing). A line's `id` comes from the request's id, so the
same request always has the same line id.
"""

from __future__ import annotations

from typing import Any

import msgspec

from msgbatch.errors import RESULT_ERROR_TYPES, error_body, openai_error_body
from msgbatch.ids import new_request_id
from msgbatch.models import CANCELED, NO_TOKENS

__all__ = [
    "canceled_line",
    "chat_tokens",
    "embedding_tokens",
    "errored_line",
    "expired_line",
    "openai_bulk_line",
    "openai_errored_line",
    "openai_succeeded_line",
    "succeeded_line",
    "tokens_of",
]

_encode = msgspec.json.encode


def _line(custom_id: str, result: bytes) -> bytes:
    return b'{"custom_id":' + _encode(custom_id) + b',"result":' + result + b"}"


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


_CANCELED = b',"result":{"type":"canceled"}}'
_EXPIRED = b',"result":{"type":"expired"}}'


def canceled_line(custom_id: str) -> bytes:
    return b'{"custom_id":' + _encode(custom_id) + _CANCELED


def expired_line(custom_id: str) -> bytes:
    return b'{"custom_id":' + _encode(custom_id) + _EXPIRED


def _count(value: object) -> int:
    return value if type(value) is int and value > 0 else 0  # not a bool, not negative


def tokens_of(message: dict[str, Any]) -> tuple[int, int, int, int]:
    """A Message's usage as counted for its batch: input, output, cache read, cache creation."""
    usage = message.get("usage")
    if not isinstance(usage, dict):
        return NO_TOKENS
    get = usage.get
    i, o, r, c = (
        get("input_tokens", 0),
        get("output_tokens", 0),
        get("cache_read_input_tokens", 0),
        get("cache_creation_input_tokens", 0),
    )
    # Every answer passes here: whole non-negative counts (the usual case) need no more checking.
    if (
        type(i) is int
        and type(o) is int
        and type(r) is int
        and type(c) is int
        and i >= 0
        and o >= 0
        and r >= 0
        and c >= 0
    ):
        return (i, o, r, c)
    return (_count(i), _count(o), _count(r), _count(c))


# -- the OpenAI dialect ------------------------------------------------------------------------

# The `error` of a request that never ran: the batch was cancelled first, or expired.
_NOT_RUN = {
    True: b'"error":{"code":"batch_cancelled","message":"This request was not executed: the batch was cancelled."}}',
    False: b'"error":{"code":"batch_expired",'
    b'"message":"This request could not be executed before the completion window expired."}}',
}
_HEAD = b'{"custom_id":'


def _line_id(request_id: int) -> bytes:
    return b'{"id":"batch_req_%016x","custom_id":' % request_id


def openai_succeeded_line(request_id: int, custom_id: str, body: dict[str, Any]) -> bytes:
    """An output file's line: the request's answer, as the endpoint's API answers it."""
    return (
        _line_id(request_id)
        + _encode(custom_id)
        + b',"response":{"status_code":200,"request_id":"'
        + new_request_id().encode()
        + b'","body":'
        + _encode(body)
        + b'},"error":null}'
    )


def openai_errored_line(
    request_id: int, custom_id: str, error_type: str, message: str, status: int, code: str | None = None
) -> bytes:
    """An error file's line for a request that failed: the HTTP status and error body the API
    would have answered it with (as OpenAI's batches do for a request the model refused)."""
    return (
        _line_id(request_id)
        + _encode(custom_id)
        + b',"response":{"status_code":%d,"request_id":"' % status
        + new_request_id().encode()
        + b'","body":'
        + openai_error_body(error_type, message, code=code)
        + b'},"error":null}'
    )


def openai_bulk_line(request_id: int, result: int, stored: bytes) -> bytes:
    """The error file's line for a canceled or expired request, from its stored neutral line
    (`{"custom_id":<json>,"result":{"type":...}}`): it never ran, so it has no response."""
    canceled = result == CANCELED
    custom_id = stored[len(_HEAD) : len(stored) - len(_CANCELED if canceled else _EXPIRED)]
    return _line_id(request_id) + custom_id + b',"response":null,' + _NOT_RUN[canceled]


def chat_tokens(answer: dict[str, Any]) -> tuple[int, int, int, int]:
    """A chat or text completion's usage as counted for its batch (prompt tokens less the cached
    ones are input, the cached ones cache reads)."""
    usage = answer.get("usage")
    if not isinstance(usage, dict):
        return NO_TOKENS
    prompt = _count(usage.get("prompt_tokens"))
    details = usage.get("prompt_tokens_details")
    cached = min(_count(details.get("cached_tokens")), prompt) if isinstance(details, dict) else 0
    return (prompt - cached, _count(usage.get("completion_tokens")), cached, 0)


def embedding_tokens(answer: dict[str, Any]) -> tuple[int, int, int, int]:
    usage = answer.get("usage")
    if not isinstance(usage, dict):
        return NO_TOKENS
    return (_count(usage.get("prompt_tokens")), 0, 0, 0)
