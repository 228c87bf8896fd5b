"""The HTTP server: uvicorn on its fast `httptools` parser, with the limits that parser lacks.

httptools (llhttp) sets no limit on the request line and headers, and uvicorn accumulates them
with repeated `bytes +=`: one connection sending a 128 MiB header stalls the event loop for many
seconds. h11 has a limit but parses in pure Python, and answers an oversized head with a plain
text 400. So msgbatch keeps httptools and adds, in `EdgeProtocol`:

- **A bounded head.** While a request's line and headers are arriving, at most
  `max_header_bytes` of them reach the parser; past that the client gets `431` (`414` when the
  URL alone is too long) in the API's error shape. Counting costs one addition per read, so the
  cost of an attempt stays bounded however large it is.
- **A head timeout.** The line and headers must arrive within `header_timeout` of the first byte
  (or of the connection opening): else `408 timeout_error`. A connection that sent nothing is
  closed without an answer.
- **A body nobody reads** (the route answered before the body was in, e.g. with an error) must
  finish arriving within `body_timeout` of that answer, else the connection is closed. Bodies
  the application reads are timed by it (`api/body.py`).
- **Malformed requests** (a bad `Content-Length`, both `Content-Length` and chunked, a bad chunk
  size, a bad header character, ...) get `400 invalid_request_error` with llhttp's reason, in
  the API's error shape with a request id, instead of uvicorn's plain text. So does an
  `Upgrade` request with a body (llhttp would give the body to the new protocol, and the route
  would see none); without a body it is served as plain HTTP/1.1.

Every refusal is one INFO line; the answer is followed by `connection: close`, and what the
client still sends is read and dropped for a moment, so that the answer is not lost to a reset.

`uvicorn_options` is the one place where the server is configured: `msgbatch serve` and the
tests' servers start uvicorn with it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from msgbatch.config import Settings
from msgbatch.errors import (
    HeadersTooLargeError,
    InvalidRequestError,
    MsgbatchError,
    RequestTimeoutError,
    URITooLongError,
    error_body,
)
from msgbatch.ids import new_request_id

log = logging.getLogger("msgbatch.http")

# After a refusal: how long, and how much, of what the client still sends is read and dropped.
LINGER_SECONDS = 1.0
LINGER_BYTES = 8 * 1024 * 1024


class EdgeProtocol(HttpToolsProtocol):
    max_head_bytes: ClassVar[int] = 64 * 1024
    head_timeout: ClassVar[float] = 10.0
    body_timeout: ClassVar[float] = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # between the end of one request and the end of the next one's headers
        self._head_bytes = 0
        self._heads_done = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._dropped = 0

    # -- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            self._dropped += len(data)
            if self._dropped > LINGER_BYTES:
                self.transport.close()
            return
        self._unset_keepalive_if_required()
        if self._in_head:
            room = self.max_head_bytes - self._head_bytes
            if len(data) > room:
                heads = self._heads_done
                if not self._feed(data[:room]):
                    return
                if self._heads_done == heads:
                    self._refuse_head()
                    return
                data = data[room:]
            else:
                self._head_bytes += len(data)
        self._feed(data)

    def _feed(self, data: bytes) -> bool:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._refuse(InvalidRequestError(f"Invalid HTTP request: {exc}"))
            return False
        except httptools.HttpParserUpgrade:
            pass  # no upgrades here (ws="none"): the request is served as plain HTTP
        return not self._refused and not self.transport.is_closing()

    # -- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def on_headers_complete(self) -> None:
        self._heads_done += 1
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self.parser.should_upgrade() and any(
            name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0")
            for name, value in self.headers
        ):
            # llhttp hands what follows an `Upgrade` request's head to the new protocol, so its body
            # would never reach the route (curl --http2 sends `Upgrade: h2c` on plain http://).
            self._refuse(InvalidRequestError("Upgrade is not supported: send the request without an Upgrade header."))
            return
        self._in_head = False
        self._head_bytes = 0
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.cycle is not None and self.cycle.more_body and not self.transport.is_closing():
            self._drain_timer = self.loop.call_later(self.body_timeout, self._drain_timed_out)

    def _unsupported_upgrade_warning(self) -> None:
        pass  # an `Upgrade` header is not worth a warning per request: it is served as plain HTTP

    # -- refusals --------------------------------------------------------------------------

    def _refuse_head(self) -> None:
        url = getattr(self, "url", b"")
        # Only the method and a space came before the URL: the URL itself is what is too long.
        if self.max_head_bytes - len(url) <= 16:
            self._refuse(URITooLongError(f"The URL exceeds {self.max_head_bytes:,} bytes."))
        else:
            self._refuse(HeadersTooLargeError(f"The request line and headers exceed {self.max_head_bytes:,} bytes."))

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._head_bytes == 0:
            self.transport.close()  # nothing was asked: nothing to answer
            return
        self._refuse(
            RequestTimeoutError(f"The request line and headers did not arrive within {self.head_timeout:g} s.")
        )

    def _drain_timed_out(self) -> None:
        self._drain_timer = None
        log.info("http.refused status=- peer=%s reason=unread body still arriving after the answer", self._peer())
        self.transport.close()

    def _peer(self) -> str:
        return self.client[0] if self.client else "-"

    def _refuse(self, error: MsgbatchError) -> None:
        """Answer in the API's error shape and close, reading (and dropping) input for a moment."""
        if self._refused:
            return
        self._cancel_timers()
        log.info("http.refused status=%d peer=%s reason=%s", error.status, self._peer(), error.message)
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if self._in_head:  # a request not handed to a route yet: answerable once the one before is
            answerable = cycle is None or cycle.response_complete
        else:  # the body of the request a route has: answerable if the route has not answered
            answerable = cycle is not None and not cycle.response_started
        if not answerable:
            # An answer now would be taken for the answer to an earlier request: just close.
            self.transport.close()
            return
        if not self._in_head:
            # The route reads no more of this body and answers nothing, and says nothing of a
            # client that left (api/exceptions.py).
            cycle.disconnected = True
            cycle.scope["state"]["refused"] = error.status
            cycle.message_event.set()
        request_id = new_request_id()
        body = error_body(error.type, error.message, request_id)
        head = [STATUS_LINE[error.status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"request-id: " + request_id.encode() + b"\r\n",
            b"cache-control: no-store\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self._refused = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._drain_timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._drain_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._drain_timer = None


def protocol_for(settings: Settings) -> type[EdgeProtocol]:
    """`EdgeProtocol` with this configuration's limits."""
    return type(
        "EdgeProtocol",
        (EdgeProtocol,),
        {
            "max_head_bytes": settings.max_header_bytes,
            "head_timeout": settings.header_timeout,
            "body_timeout": settings.body_timeout,
        },
    )


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.run` / `uvicorn.Config`."""
    return {
        "host": settings.host,
        "port": settings.port,
        "http": protocol_for(settings),
        "ws": "none",
        # X-Forwarded-* are handled by api/forwarded.py, with the trusted peers as configured.
        "proxy_headers": False,
        "log_level": "warning",
        "access_log": False,
        "timeout_graceful_shutdown": 15,
    }
