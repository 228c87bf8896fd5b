"""The envelope of a create call: parsed once with msgspec, `params` kept as the raw bytes they came as.

Only the envelope is checked here (the request count, each `custom_id`, `params` being an
object); what is inside `params` is checked per request when it runs, as the hosted API does.
But the whole body must be JSON: msgspec skips over `params` without decoding its strings, so
invalid UTF-8 in there is looked for here (`_check_utf8`), or it would be stored and fail later.
"""

from __future__ import annotations

import codecs
import gc
import re
from collections.abc import Sequence
from typing import Any

import msgspec

from msgbatch.errors import InvalidRequestError

CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")


class _Request(msgspec.Struct, gc=False):
    custom_id: str
    params: msgspec.Raw


class CreateBody(msgspec.Struct, gc=False):
    requests: list[_Request]
    # Options beyond the hosted API, decoded as they came: msgbatch.batch_options checks them.
    metadata: Any = None
    fail_fast: Any = None
    webhook_url: Any = None
    priority: Any = None  # the batch's priority within its workspace (high, normal or low)


class _Model(msgspec.Struct, gc=False):
    """The one field of a request's params read at create: what routes it to a backend."""

    model: object = None


_decoder = msgspec.json.Decoder(CreateBody)
_model_decoder = msgspec.json.Decoder(_Model)
_UTF8_SLICE = 1 << 20
# A `\uD800`-`\uDBFF` escape not followed by a low one, or a `\uDC00`-`\uDFFF` not preceded by a
# high one: an odd run of backslashes before the `u` makes it an escape rather than literal text.
_LONE_SURROGATE = re.compile(
    rb"(?<!\\)(?:\\\\)*(\\u[dD][89abAB][0-9a-fA-F]{2})(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<![\\][uU][dD][89abAB][0-9a-fA-F]{2})(?<!\\)(?:\\\\)*(\\u[dD][c-fC-F][0-9a-fA-F]{2})"
)
_TYPE_WORDS = {
    "str": "a valid string",
    "object": "a valid dictionary",
    "array": "a valid list",
    "int": "a valid integer",
}


def _api_path(msgspec_path: str) -> str:
    parts = re.findall(r"\.([A-Za-z_]\w*)|\[(\d+)\]", msgspec_path)
    return ".".join(name or index for name, index in parts)


def _translate(exc: msgspec.ValidationError) -> str:
    """msgspec's messages, in the API's `field.path: problem` style."""
    text = str(exc)
    m = re.match(r"Object missing required field `(\w+)`(?: - at `\$(.*)`)?", text)
    if m:
        prefix = _api_path(m.group(2) or "")
        return f"{prefix + '.' if prefix else ''}{m.group(1)}: Field required"
    m = re.match(r"Expected `(\w+)`, got `(\w+)`(?: - at `\$(.*)`)?", text)
    if m:
        return f"{_api_path(m.group(3) or '') or 'body'}: Input should be {_TYPE_WORDS.get(m.group(1), m.group(1))}"
    return text


def _not_json(body: bytes | bytearray | memoryview, exc: msgspec.DecodeError) -> InvalidRequestError:
    """msgspec's complaint, unless the body holds a lone surrogate escape, which msgspec reports as
    a truncated input or an unexpected end of a hex escape: say that instead."""
    match = _LONE_SURROGATE.search(body)
    if match is not None:
        escape = (match.group(1) or match.group(2)).decode()
        at = match.start(1) if match.group(1) else match.start(2)
        return InvalidRequestError(
            f"The request body is not valid JSON: {escape} at byte {at} is a lone UTF-16 surrogate "
            "(a high surrogate escape must be followed by a low one, as in \\ud83d\\ude00)"
        )
    return InvalidRequestError(f"The request body is not valid JSON: {exc}")


def _check_utf8(body: bytes | bytearray | memoryview) -> None:
    # msgspec validated the strings it decoded, not the ones inside params (kept raw). An ASCII
    # body is valid UTF-8, and isascii() scans 50 MB in a few milliseconds; any other body is
    # decoded in slices, so that checking it never holds a second copy of it as a str.
    data: bytes | bytearray
    if isinstance(body, memoryview):  # the buffer it views, unless it views only part of it
        obj = body.obj
        data = obj if isinstance(obj, bytes | bytearray) and len(obj) == body.nbytes else body.tobytes()
    else:
        data = body
    if data.isascii():
        return
    view = memoryview(data)
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        for start in range(0, len(view), _UTF8_SLICE):
            decoder.decode(view[start : start + _UTF8_SLICE])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        try:  # the error path only: decode it whole for the exact position
            bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequestError(
                f"The request body is not valid JSON: invalid UTF-8 at byte {exc.start} ({exc.reason})"
            ) from None
        raise InvalidRequestError("The request body is not valid JSON: invalid UTF-8") from None


def parse_create_body(body: bytes | bytearray | memoryview, max_requests: int) -> list[_Request]:
    """Check the envelope of a create call; params stay as the raw bytes they came as."""
    return parse_create(body, max_requests).requests


class Models(msgspec.Struct):
    """The models a batch's requests name: `names[k]` is model key k ('' for params without a
    string `model`), `totals[k]` how many requests name it, and `runs` the (start, stop, key)
    index ranges of consecutive requests with the same key."""

    names: list[str]
    totals: list[int]
    runs: list[tuple[int, int, int]]


def models_of(requests: Sequence[Any]) -> Models:
    """Read each request's `model` out of its raw params (`request.params`: bytes or a buffer;
    about 0.3 µs a request: 30 ms for 100,000, against a second for the whole create). An OpenAI
    batch's request bodies name their `model` the same way."""
    keys: dict[str, int] = {}
    totals: list[int] = []
    runs: list[tuple[int, int, int]] = []
    decode = _model_decoder.decode
    start, current = 0, -1
    for index, request in enumerate(requests):
        try:
            model = decode(request.params).model
        except msgspec.DecodeError:  # invalid JSON was refused before; a ValidationError is neither
            model = None
        name = model if isinstance(model, str) else ""
        key = keys.get(name)
        if key is None:
            key = keys[name] = len(keys)
            totals.append(0)
        totals[key] += 1
        if key != current:
            if current >= 0:
                runs.append((start, index, current))
            start, current = index, key
    if current >= 0:
        runs.append((start, len(requests), current))
    return Models(list(keys), totals, runs)


def parse_create(body: bytes | bytearray | memoryview, max_requests: int) -> CreateBody:
    """The envelope of a create call, checked, with its options (not checked: batch_options does)."""
    # The cyclic GC would walk 100k fresh objects several times during a big parse; it can't
    # find cycles here anyway.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        try:
            parsed = _decoder.decode(body)
        except msgspec.ValidationError as exc:
            raise InvalidRequestError(_translate(exc)) from None
        except msgspec.DecodeError as exc:
            raise _not_json(body, exc) from None
        except RecursionError:
            # msgspec recurses once per level of nesting, params included (it skips them by parsing).
            raise InvalidRequestError("The request body nests arrays and objects too deeply to be parsed") from None
    finally:
        if gc_was_enabled:
            gc.enable()
    _check_utf8(body)
    requests = parsed.requests
    if not requests:
        raise InvalidRequestError("requests: List should have at least 1 item after validation, not 0")
    if len(requests) > max_requests:
        raise InvalidRequestError(
            f"requests: List should have at most {max_requests:,} items after validation, not {len(requests):,}"
        )
    seen: set[str] = set()
    fullmatch = CUSTOM_ID.fullmatch
    for i, req in enumerate(requests):
        cid = req.custom_id
        if fullmatch(cid) is None:
            raise InvalidRequestError(f"requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
        if cid in seen:
            raise InvalidRequestError(
                f"requests: custom_id's must be unique within a batch. Duplicate custom_id found: {cid}"
            )
        seen.add(cid)
        if memoryview(req.params)[0] != 0x7B:  # "{"
            raise InvalidRequestError(f"requests.{i}.params: Input should be a valid dictionary")
    return parsed


def parse_betas(values: list[str]) -> str:
    """`anthropic-beta` may be comma separated and/or repeated; keep each value once, in order."""
    betas: list[str] = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if item and item not in betas:
                betas.append(item)
    return ",".join(betas)
