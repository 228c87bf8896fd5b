"""What the HTTP backends share: one pool of kept-alive connections per backend (`client.py`, or
httpx with `client = "httpx"`), and the mapping of everything an upstream can do wrong (a
status, a `retry-after`, a transport fault, a body that is not JSON) to the error tree's classes
(`msgbatch.errors`), which say whether running the request again may succeed.

| upstream says | error type | retried |
|---|---|---|
| 400, 413, 422 | invalid_request_error (or the Anthropic-format body's own type) | no |
| 401 / 402 / 403 / 404 | authentication / billing / permission / not_found_error | no |
| 408, 409 | timeout_error / api_error | yes |
| 429 | rate_limit_error, after `retry-after` | yes |
| 500, 502, other 5xx | api_error | yes |
| 503, 529 | overloaded_error | yes |
| 504, a timeout | timeout_error | yes |
| connection refused / reset, a malformed 2xx body | api_error | yes |

An Anthropic-format `x-should-retry` header overrides the status. Upstream keys never appear in
a message: they are sent in headers only, and anything echoed back is redacted.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec

from msgbatch.backends.client import ConnectFailed, HTTPClient, ProtocolFault, RawResponse
from msgbatch.backends.retry import RetryPolicy
from msgbatch.errors import (
    RESULT_ERROR_TYPES,
    GatewayTimeoutError,
    InternalServerError,
    MsgbatchError,
    UpstreamUnreachableError,
    error_for_type,
)

__all__ = [
    "OVERLOAD_STATUSES",
    "HttpBackend",
    "error_type_for_status",
    "is_overload",
    "parse_retry_after",
    "redact",
    "upstream_error",
]

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "invalid_request_error",  # request_too_large is an HTTP-level type, not a result type
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_RETRYABLE_4XX = frozenset({408, 409, 429})
OVERLOAD_STATUSES = frozenset({429, 503, 529})
_OVERLOAD_TYPES = frozenset({"rate_limit_error", "overloaded_error", "timeout_error"})
_MAX_MESSAGE = 2000
_MAX_RETRY_AFTER = 86400.0

_decode = msgspec.json.decode


def error_type_for_status(status: int) -> str:
    found = _TYPE_BY_STATUS.get(status)
    if found is not None:
        return found
    if status >= 500:
        return "api_error"
    return "invalid_request_error" if status >= 400 else "api_error"


def is_retryable_status(status: int) -> bool:
    return status >= 500 or status in _RETRYABLE_4XX


def is_overload(exc: MsgbatchError) -> bool:
    """Does this failure say the upstream has more work than it can take (so: send less)?"""
    if not exc.retryable:
        return False
    if exc.upstream_status is not None:
        return exc.upstream_status in OVERLOAD_STATUSES or exc.upstream_status == 504
    return exc.type in _OVERLOAD_TYPES


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `retry-after` in seconds or as an HTTP date."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return _clamp(float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return _clamp(float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return _clamp(when.timestamp() - (time.time() if now is None else now))


def _clamp(seconds: float) -> float | None:
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER)


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _describe(body: Any) -> tuple[str | None, str | None]:
    """(type, message) from the error bodies the known servers send, or Nones."""
    if not isinstance(body, dict):
        return None, None
    error = body.get("error")
    if isinstance(error, dict):  # Anthropic {"type": "error", "error": {...}}, OpenAI {"error": {...}}
        etype = error.get("type")
        message = error.get("message")
        return (etype if isinstance(etype, str) else None), (message if isinstance(message, str) else None)
    if isinstance(error, str):  # Ollama, llama.cpp's older builds
        return None, error
    for key in ("message", "detail"):  # vLLM's older {"object": "error", "message": ...}, FastAPI
        value = body.get(key)
        if isinstance(value, str):
            return None, value
        if value is not None:
            return None, msgspec.json.encode(value).decode()
    return None, None


def upstream_error(response: RawResponse, *, backend: str, secrets: Iterable[str] = ()) -> MsgbatchError:
    """The error for an upstream's non-2xx answer: its error type and message, if it gave them."""
    status = response.status
    try:
        body = _decode(response.content)
    except msgspec.DecodeError:
        body = None
    upstream_type, message = _describe(body)
    error_type = upstream_type if upstream_type in RESULT_ERROR_TYPES else error_type_for_status(status)
    if status == 413:
        error_type = "invalid_request_error"
    if not message:
        text = response.content[:300].decode("utf-8", "replace").strip()
        reason = response.reason or "error"
        message = f"upstream {backend} answered HTTP {status} {reason}" + (f": {text}" if text else "")
    retryable = is_retryable_status(status)
    should = response.headers.get("x-should-retry")
    if should == "true":
        retryable = True
    elif should == "false":
        retryable = False
    return error_for_type(
        error_type,
        redact(message[:_MAX_MESSAGE], secrets),
        retryable=retryable,
        retry_after=parse_retry_after(response.headers) if retryable else None,
        upstream_status=status,
    )


def transport_error(exc: BaseException, *, backend: str, timeout: float) -> MsgbatchError:
    """A fault below HTTP: the upstream timed out, refused, dropped the connection or spoke nonsense."""
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return GatewayTimeoutError(f"upstream {backend} did not answer within {timeout:g}s")
    if isinstance(exc, ConnectFailed | httpx.ConnectError):
        return UpstreamUnreachableError(f"cannot connect to upstream {backend}")
    if isinstance(exc, ProtocolFault | httpx.RemoteProtocolError | httpx.DecodingError):
        return InternalServerError(f"upstream {backend} answered with something that is not HTTP")
    kind = type(exc).__name__
    return InternalServerError(f"connection to upstream {backend} failed ({kind})")


_TRANSPORT_FAULTS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ProtocolFault, httpx.HTTPError)


def malformed(backend: str, what: str) -> MsgbatchError:
    return InternalServerError(f"upstream {backend} answered with a malformed body: {what}")


def normalize_base_url(url: str, *, default_path: str = "") -> str:
    """`url` without a trailing slash; `default_path` appended when the URL has no path at all."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {url!r}")
    if not parts.path and default_path:
        url += default_path
    return url


class HttpBackend:
    """A backend that POSTs JSON to one upstream over a pool of kept-alive connections.

    Subclasses build the request and read the answer; this class owns the connections, the
    timeout and the mapping of every failure to the error tree.
    """

    name: str

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        api_key: str = "",
        timeout: float = 600.0,
        concurrency: int = 64,
        headers: dict[str, str] | None = None,
        client: str = "builtin",
        retry: RetryPolicy | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url
        self.timeout = timeout
        self.concurrency = concurrency
        self.retry = retry or RetryPolicy()
        self._secrets = tuple(s for s in (api_key,) if s)
        self._client: HTTPClient | None = None
        self._httpx: httpx.AsyncClient | None = None
        if client == "httpx":
            self._httpx = httpx.AsyncClient(
                base_url=base_url,
                headers=headers or {},
                timeout=httpx.Timeout(timeout, connect=min(timeout, 30.0)),
                limits=httpx.Limits(
                    max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=4.0
                ),
                follow_redirects=False,
            )
        elif client == "builtin":
            self._client = HTTPClient(base_url, headers=headers, timeout=timeout, max_connections=concurrency)
        else:
            raise ValueError(f"unknown HTTP client {client!r} (builtin or httpx)")

    async def _post(self, path: str, body: bytes, headers: dict[str, str]) -> RawResponse:
        if self._client is not None:
            return await self._client.post(path, body, headers)
        assert self._httpx is not None
        response = await self._httpx.post(self.base_url + path, content=body, headers=headers)
        return RawResponse(response.status_code, response.reason_phrase, dict(response.headers), response.content)

    async def post_json(self, path: str, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
        """POST `body` to `base_url + path`; the decoded JSON object of a 2xx answer, else a MsgbatchError."""
        try:
            response = await self._post(path, body, headers)
        except _TRANSPORT_FAULTS as exc:  # TimeoutError included: ours; the dispatcher's expiry cancels
            raise transport_error(exc, backend=self.name, timeout=self.timeout) from None
        if not 200 <= response.status < 300:
            raise upstream_error(response, backend=self.name, secrets=self._secrets)
        try:
            answer = _decode(response.content)
        except msgspec.DecodeError:
            raise malformed(self.name, "not JSON") from None
        if not isinstance(answer, dict):
            raise malformed(self.name, "not a JSON object")
        return answer

    @property
    def max_concurrency(self) -> int:
        return self.concurrency

    @property
    def concurrency_limit(self) -> int:
        return self.concurrency

    def __repr__(self) -> str:  # never shows the key
        return f"{type(self).__name__}(name={self.name!r}, base_url={self.base_url!r})"

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        if self._httpx is not None:
            await self._httpx.aclose()
