"""An OpenAI batch's input file, checked line by line when the batch is created, as OpenAI checks
it while a batch is `validating`.

A line is `{"custom_id": "...", "method": "POST", "url": "/v1/chat/completions", "body": {...}}`
(the lines of vLLM's `run-batch` files are the same); blank lines are skipped, other keys ignored.
A file with any bad line fails as a whole: the batch is `failed`, its `errors` list the bad lines
(1-based, up to `MAX_ERRORS` of them) with OpenAI's codes, and none of its requests runs.

| problem | code | param |
|---|---|---|
| the line is not JSON, not an object, or not UTF-8 | `invalid_json_line` | |
| `custom_id`, `method`, `url` or `body` missing | `missing_required_parameter` | that key |
| `custom_id` not a string, `body` not an object | `invalid_type` | that key |
| `custom_id` empty, longer than 512 characters or holding a NUL | `invalid_value` | `custom_id` |
| `method` not `POST` | `invalid_value` | `method` |
| `url` not the batch's endpoint | `url_mismatch` | `url` |
| a `custom_id` seen on an earlier line | `duplicate_custom_id` | `custom_id` |
| no request at all | `empty_file` | |
| more lines than allowed (`max_file_lines`) | `too_many_tasks` | |

A custom_id is any string otherwise (OpenAI's are free-form): the results lines JSON-quote it.
The requests keep each `body` as the bytes it has in the file (a view of the file's buffer: no
copy), which become the request's params.
"""

from __future__ import annotations

import codecs
from typing import Any

import msgspec

__all__ = ["MAX_CUSTOM_ID", "MAX_ERRORS", "InputRequest", "check_input", "check_line"]

MAX_CUSTOM_ID = 512
MAX_ERRORS = 100


class _Line(msgspec.Struct, gc=False):
    custom_id: Any = msgspec.UNSET
    method: Any = msgspec.UNSET
    url: Any = msgspec.UNSET
    body: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


class InputRequest(msgspec.Struct, gc=False):
    """A request of the batch: what `BatchManager.create_batch` takes."""

    custom_id: str
    params: msgspec.Raw


_decode_line = msgspec.json.Decoder(_Line).decode


def _error(code: str, message: str, line: int | None = None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def _missing(key: str, line: int) -> dict[str, Any]:
    return _error("missing_required_parameter", f"Missing required parameter: '{key}'.", line, key)


def check_line(
    raw: bytes | memoryview, number: int, endpoint: str | None, seen: set[str]
) -> InputRequest | dict[str, Any]:
    """The request on one line, or the first problem with it (`endpoint` None: any `url` string;
    `seen` gathers the custom_ids of the lines before)."""
    try:
        line = _decode_line(raw)
    except (msgspec.DecodeError, RecursionError):
        return _error("invalid_json_line", "This line is not parseable as valid JSON.", number)
    for key in ("custom_id", "method", "url"):
        if getattr(line, key) is msgspec.UNSET:
            return _missing(key, number)
    if line.body is msgspec.UNSET:
        return _missing("body", number)
    custom_id = line.custom_id
    if not isinstance(custom_id, str):
        return _error("invalid_type", "Invalid type for 'custom_id': expected a string.", number, "custom_id")
    if not custom_id or len(custom_id) > MAX_CUSTOM_ID or "\0" in custom_id:
        message = f"Invalid 'custom_id': it must be 1 to {MAX_CUSTOM_ID} characters, without NUL."
        return _error("invalid_value", message, number, "custom_id")
    if line.method != "POST":
        return _error("invalid_value", "Invalid 'method': only POST is supported.", number, "method")
    if endpoint is None and not isinstance(line.url, str):
        return _error("invalid_type", "Invalid type for 'url': expected a string.", number, "url")
    if endpoint is not None and line.url != endpoint:
        message = f"The URL provided for this request does not match the batch endpoint {endpoint}."
        return _error("url_mismatch", message, number, "url")
    body = line.body
    if memoryview(body)[0] != 0x7B:  # "{"
        return _error("invalid_type", "Invalid type for 'body': expected an object.", number, "body")
    if custom_id in seen:
        message = (
            "The custom_id for this request is a duplicate of another request. "
            "The custom_id parameter must be unique for each request in a batch."
        )
        return _error("duplicate_custom_id", message, number, "custom_id")
    seen.add(custom_id)
    return InputRequest(custom_id, body)


def _blank(raw: memoryview) -> bool:
    # A line's first bytes settle it but for a line of whitespace (or an empty one).
    return not bytes(raw[:64]).strip() and not bytes(raw).strip()


def _is_utf8(raw: memoryview) -> bool:
    try:
        codecs.utf_8_decode(raw, "strict", True)
    except UnicodeDecodeError:
        return False
    return True


def check_input(
    content: bytes | bytearray, endpoint: str, max_lines: int
) -> tuple[list[InputRequest], list[dict[str, Any]]]:
    """The requests of a batch input file, and the errors that fail it (the requests mean
    nothing when there are errors)."""
    view = memoryview(content)
    ascii_only = content.isascii()  # the common case: nothing to decode
    requests: list[InputRequest] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    start = number = 0
    size = len(content)
    while start < size and len(errors) < MAX_ERRORS:
        end = content.find(b"\n", start)
        if end < 0:
            end = size
        number += 1
        raw = view[start:end]
        start = end + 1
        if _blank(raw):
            continue
        if len(requests) + len(errors) >= max_lines:
            message = f"The batch input file has more than the maximum of {max_lines:,} requests."
            errors.append(_error("too_many_tasks", message))
            break
        if not ascii_only and not _is_utf8(raw):
            errors.append(_error("invalid_json_line", "This line is not valid UTF-8.", number))
            continue
        found = check_line(raw, number, endpoint, seen)
        if isinstance(found, dict):
            errors.append(found)
        else:
            requests.append(found)
    if not requests and not errors:
        errors.append(_error("empty_file", "The batch input file is empty. It must contain at least one request."))
    return requests, errors
