"""A small synchronous client for the Message Batches API.

Plain httpx rather than the SDK: it starts fast, works with servers old and new, and lets the
CLI stream a create body from disk. Every failure becomes a `ClientError` whose message says
what happened (the API's error type and message, the request id) and whose `exit_code` is the
CLI's exit status.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import quote

import httpx
import msgspec

from msgbatch import __version__

DEFAULT_BASE_URL = "http://127.0.0.1:8787"
API_VERSION = "2023-06-01"

# Exit statuses of the CLI (documented in every client command's --help).
EXIT_OK = 0
EXIT_API = 1  # the API answered an error, or the server could not be reached
EXIT_USAGE = 2  # bad flags or a bad input file
EXIT_FAILED_REQUESTS = 3  # --fail-on-errors and some request did not succeed
EXIT_TIMEOUT = 4  # --timeout passed before the batches ended
EXIT_NOT_FOUND = 5  # `results --custom-id` matched nothing

# Statuses after which the same call may succeed: the server said so (429, 529, 503) or had a
# transient failure. A create is only retried when the server cannot have stored it, or when it
# carries an Idempotency-Key that the server honours (then a second send gives back the first batch).
_RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
_RETRY_CREATE_STATUSES = frozenset({429, 503, 529})
_RETRY_KEYED_CREATE_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 529})


class ClientError(Exception):
    def __init__(self, message: str, *, exit_code: int = EXIT_API) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class APIStatusError(ClientError):
    """The server answered with an error status."""

    def __init__(self, status: int, error_type: str, message: str, request_id: str | None) -> None:
        text = f"HTTP {status} {error_type}: {message}"
        if request_id:
            text += f" (request-id {request_id})"
        super().__init__(text)
        self.status = status
        self.error_type = error_type
        self.api_message = message
        self.request_id = request_id


def _error_from(response: httpx.Response) -> APIStatusError:
    request_id = response.headers.get("request-id")
    error_type, message = "api_error", response.reason_phrase or "error"
    try:
        raw = response.read()
    except httpx.HTTPError:
        raw = b""
    try:
        body = msgspec.json.decode(raw)
        error = body["error"]
        error_type, message = str(error["type"]), str(error["message"])
        request_id = body.get("request_id") or request_id
    except (msgspec.DecodeError, KeyError, TypeError, AttributeError):
        if raw.strip():  # not the API's error shape (a proxy, say): show its first words
            message = raw[:200].decode(errors="replace").strip()
    return APIStatusError(response.status_code, error_type, message, request_id)


class BatchesClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 60.0,
        max_retries: int = 2,
        betas: tuple[str, ...] = (),
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self._sleep = sleep
        self._keys_honoured: bool | None = None  # whether the server honours Idempotency-Key (msgbatch)
        headers = {
            "x-api-key": api_key,
            "anthropic-version": API_VERSION,
            "user-agent": f"msgbatch-cli/{__version__}",
        }
        if betas:
            headers["anthropic-beta"] = ",".join(betas)
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=10.0),
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> BatchesClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ---------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Callable[[], Iterator[bytes]] | None = None,
        size: int | None = None,
        stream: bool = False,
        retry_statuses: frozenset[int] = _RETRY_STATUSES,
        timeout: float | None = None,
        content_type: str = "application/json",
        idempotency_key: str | None = None,
    ) -> httpx.Response:
        attempt = 0
        while True:
            headers = {"idempotency-key": idempotency_key} if idempotency_key else {}
            if body is not None:
                headers["content-type"] = content_type
                if size is not None:
                    headers["content-length"] = str(size)
            request = self._http.build_request(
                method,
                path,
                params=params,
                content=body() if body is not None else None,
                headers=headers,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
            try:
                response = self._http.send(request, stream=stream)
            except httpx.ConnectError as exc:
                # Not retried: a refused connection is almost always a wrong address or a stopped
                # server, and `watch` rides out restarts on its own.
                raise ClientError(
                    f"cannot connect to {self.base_url} ({exc}). Is the server running? "
                    "Set --base-url or ANTHROPIC_BASE_URL."
                ) from None
            except httpx.TimeoutException as exc:
                error: ClientError = ClientError(
                    f"{method} {path}: the server did not answer in time ({type(exc).__name__})"
                )
                retry_after = None
                if body is not None and not self._may_send_again(idempotency_key):
                    raise error from None  # it may have been stored: never send a create twice
            except httpx.HTTPError as exc:
                error = ClientError(f"{method} {path}: {type(exc).__name__}: {exc}")
                retry_after = None
                if body is not None and not self._may_send_again(idempotency_key):
                    raise error from None
            else:
                if response.status_code < 400:
                    return response
                error = _error_from(response)
                response.close()
                if response.status_code not in retry_statuses:
                    raise error
                retry_after = _retry_after(response)
            if attempt >= self.max_retries:
                raise error
            attempt += 1
            self._sleep(retry_after if retry_after is not None else min(8.0, 0.5 * 2 ** (attempt - 1)))

    def _may_send_again(self, idempotency_key: str | None) -> bool:
        """A body that may have been stored can go again only with a key the server honours:
        msgbatch does (it answers its webhook deliveries endpoint); others may ignore the key."""
        if not idempotency_key or self.max_retries == 0:
            return False
        if self._keys_honoured is None:
            try:
                probe = self._http.get("/v1/webhooks/deliveries", params={"limit": "1"}, timeout=10.0)
                self._keys_honoured = probe.status_code == 200
            except httpx.HTTPError:
                return False  # unknown: do not guess
        return self._keys_honoured

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._send(method, path, **kwargs)
        try:
            value = msgspec.json.decode(response.content)
        except msgspec.DecodeError:
            raise ClientError(f"{method} {path}: the server answered something that is not JSON") from None
        if not isinstance(value, dict):
            raise ClientError(f"{method} {path}: expected a JSON object")
        return value

    # -- the API -----------------------------------------------------------------------------

    def create(
        self, body: Callable[[], Iterator[bytes]], size: int, *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """POST a create body streamed from `body()` (called again if the call is retried). With an
        `idempotency_key`, a create that timed out or failed is sent again (msgbatch gives back the
        batch the first one made, if it made one)."""
        return self._json(
            "POST",
            "/v1/messages/batches",
            body=body,
            size=size,
            retry_statuses=_RETRY_KEYED_CREATE_STATUSES if idempotency_key else _RETRY_CREATE_STATUSES,
            timeout=600.0,
            idempotency_key=idempotency_key,
        )

    def retry(
        self,
        batch_id: str,
        *,
        result_types: list[str] | None = None,
        error_types: list[str] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """msgbatch only: a new batch of the failed lines of an ended batch."""
        selection: dict[str, list[str]] = {}
        if result_types:
            selection["result_types"] = result_types
        if error_types:
            selection["error_types"] = error_types
        raw = msgspec.json.encode(selection)
        return self._json(
            "POST",
            f"/v1/messages/batches/{quote(batch_id, safe='')}/retry",
            body=lambda: iter([raw]),
            size=len(raw),
            retry_statuses=_RETRY_KEYED_CREATE_STATUSES if idempotency_key else _RETRY_CREATE_STATUSES,
            idempotency_key=idempotency_key,
        )

    def deliveries(
        self, *, limit: int = 20, batch_id: str | None = None, status: str | None = None, after_id: str | None = None
    ) -> dict[str, Any]:
        """msgbatch only: the workspace's webhook deliveries, newest first."""
        params = {"limit": str(limit)}
        for name, value in (("batch_id", batch_id), ("status", status), ("after_id", after_id)):
            if value:
                params[name] = value
        return self._json("GET", "/v1/webhooks/deliveries", params=params)

    def redeliver(self, delivery_id: str) -> dict[str, Any]:
        return self._json("POST", f"/v1/webhooks/deliveries/{quote(delivery_id, safe='')}/redeliver")

    def retrieve(self, batch_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/messages/batches/{quote(batch_id, safe='')}")

    def list(
        self, limit: int = 20, after_id: str | None = None, metadata: dict[str, str] | None = None
    ) -> dict[str, Any]:
        params = {"limit": str(limit)}
        if after_id:
            params["after_id"] = after_id
        for key, value in (metadata or {}).items():  # msgbatch only: ?metadata[KEY]=VALUE
            params[f"metadata[{key}]"] = value
        return self._json("GET", "/v1/messages/batches", params=params)

    def iter_batches(self, page_size: int = 100, metadata: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
        after: str | None = None
        while True:
            page = self.list(page_size, after, metadata)
            yield from page.get("data", [])
            if not page.get("has_more") or not page.get("last_id"):
                return
            after = page["last_id"]

    def usage(self, since: str | None, until: str | None, group_by: Sequence[str]) -> dict[str, Any]:
        """msgbatch's own `GET /v1/usage`: the workspace's token usage over a time range."""
        params = {name: value for name, value in (("since", since), ("until", until)) if value}
        if group_by:
            params["group_by"] = ",".join(group_by)
        return self._json("GET", "/v1/usage", params=params)

    def cancel(self, batch_id: str, *, abort_running: bool | None = None) -> dict[str, Any]:
        """With `abort_running` (msgbatch only), the running requests are stopped too."""
        params = {"abort_running": str(abort_running).lower()} if abort_running is not None else None
        return self._json("POST", f"/v1/messages/batches/{quote(batch_id, safe='')}/cancel", params=params)

    def delete(self, batch_id: str) -> dict[str, Any]:
        return self._json("DELETE", f"/v1/messages/batches/{quote(batch_id, safe='')}")

    def results(
        self, batch_id: str, *, result_type: str | None = None, custom_id: str | None = None, partial: bool = False
    ) -> Iterator[bytes]:
        """The batch's results lines (without their newline), streamed.

        msgbatch filters on the server (`?type=&custom_id=`, not part of the hosted API); other
        servers ignore those parameters, so every line is checked here too. With `partial`
        (msgbatch only), the results written so far of a batch still running.
        """
        params = {}
        if result_type:
            params["type"] = result_type
        if custom_id:
            params["custom_id"] = custom_id
        if partial:
            params["partial"] = "true"
        response = self._send(
            "GET", f"/v1/messages/batches/{quote(batch_id, safe='')}/results", params=params, stream=True
        )
        try:
            pending = b""
            for chunk in response.iter_bytes():
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip() and _matches(line, result_type, custom_id):
                        yield line
            if pending.strip() and _matches(pending, result_type, custom_id):
                yield pending
        except httpx.HTTPError as exc:
            raise ClientError(f"reading the results of {batch_id} failed: {type(exc).__name__}: {exc}") from None
        finally:
            response.close()


class _ResultHead(msgspec.Struct):
    type: str


class _LineHead(msgspec.Struct):
    custom_id: str
    result: _ResultHead


_head = msgspec.json.Decoder(_LineHead)


def _matches(line: bytes, result_type: str | None, custom_id: str | None) -> bool:
    if result_type is None and custom_id is None:
        return True
    try:
        head = _head.decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False
    return (result_type is None or head.result.type == result_type) and (
        custom_id is None or head.custom_id == custom_id
    )


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return min(60.0, max(0.0, float(value)))
    except ValueError:
        return None
