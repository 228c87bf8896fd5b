"""Reading a create body: the size limit, `Content-Encoding`, the body timeout and the memory budget.

The body is read only after the API key has been checked (the caller does that first), so only a
client with a key can hold any of the budget.

- The limit (`max_body_bytes`) applies to the body as it will be parsed: a declared
  `Content-Length` over it is refused before a byte is read; a compressed body is decoded in
  bounded steps and refused as soon as its decoded size passes the limit, so a decompression bomb
  costs at most the limit in memory, never its expanded size.
- `gzip` (and `x-gzip`) and `deflate` (zlib-wrapped or raw) are decoded; any other encoding is
  `415` naming the ones supported (`br` would need a dependency of its own).
- Each wait for the next piece of the body is bounded by `body_timeout`: a client that stops
  sending gets `408 timeout_error` and its connection is closed.
- The bytes buffered are reserved from the process's `CreateBudget` before they are read:
  the declared length at once when there is one (all or nothing, so two large creates never
  each hold half), otherwise in steps as the body grows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import zlib
from collections import deque
from collections.abc import AsyncIterator

from starlette.requests import ClientDisconnect, Request

from msgbatch.config import Settings
from msgbatch.errors import (
    InvalidRequestError,
    RateLimitError,
    RequestTimeoutError,
    RequestTooLargeError,
    UnsupportedMediaTypeError,
)

log = logging.getLogger("msgbatch.api")

SUPPORTED_ENCODINGS = ("gzip", "deflate", "identity")
# Reservations for a body of unknown final size grow by this much at a time.
_STEP = 1024 * 1024


class BodyInterrupted(ClientDisconnect):
    """The client went away while sending its body."""

    def __init__(self, received: int) -> None:
        super().__init__(f"client disconnected after {received} bytes")
        self.received = received


class CreateBudget:
    """The bytes of create bodies this process holds at once.

    First come, first served: a create that does not fit waits (and so does every create behind
    it, so that a large one is not starved by a stream of small ones), and after `wait` seconds
    gives up with `429 rate_limit_error` and a `retry-after`.
    """

    def __init__(self, limit: int, wait: float) -> None:
        self.limit = limit
        self.wait = wait
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def acquire(self, size: int) -> int:
        """Reserve `size` bytes (at most the whole budget); returns what was reserved."""
        size = min(size, self.limit)
        if not self._waiters and self.used + size <= self.limit:
            self.used += size
            return size
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, future)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(self.wait):
                await future
        except TimeoutError:
            if future.done() and not future.cancelled():
                return size  # granted just as the wait ran out
            self._forget(entry)
            raise RateLimitError(
                f"Too many large create requests at once: no room for this body within {self.wait:g} s. Retry later.",
                headers={"retry-after": str(max(1, math.ceil(self.wait)))},
            ) from None
        except BaseException:
            if future.done() and not future.cancelled():
                self.release(size)
            else:
                self._forget(entry)
            raise
        return size

    def release(self, size: int) -> None:
        self.used -= size
        self._grant()

    def _forget(self, entry: tuple[int, asyncio.Future[None]]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(entry)
        self._grant()

    def _grant(self) -> None:
        while self._waiters:
            size, future = self._waiters[0]
            if future.done():
                self._waiters.popleft()
                continue
            if self.used + size > self.limit:
                return
            self._waiters.popleft()
            self.used += size
            future.set_result(None)


class _Decoder:
    """One zlib stream (or several gzip members in a row), emitting at most `room + 1` bytes a step."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._stream: zlib._Decompress | None = None
        self._ended = False
        self._first = b""  # deflate: the first byte, until the second tells the two kinds apart

    def _start(self, first: bytes) -> zlib._Decompress:
        if self.encoding == "gzip":
            return zlib.decompressobj(wbits=31)
        # `deflate` is zlib-wrapped by the standard, raw deflate by some clients: tell by the header.
        wrapped = len(first) >= 2 and first[0] & 0x0F == 8 and (first[0] << 8 | first[1]) % 31 == 0
        return zlib.decompressobj(wbits=15 if wrapped else -15)

    def feed(self, data: bytes, room: int) -> list[bytes]:
        out: list[bytes] = []
        if self._stream is None and self.encoding == "deflate" and len(self._first + data) < 2:
            self._first += data
            return out
        data, self._first = self._first + data, b""
        try:
            while data:
                if self._stream is None or (self._ended and self.encoding == "gzip"):
                    self._stream, self._ended = self._start(data), False
                elif self._ended:
                    raise InvalidRequestError(f"The request body has data after the end of its {self.encoding} stream.")
                stream = self._stream
                piece = stream.decompress(data, room + 1)
                out.append(piece)
                room -= len(piece)
                if room < 0:
                    return out
                if stream.eof:
                    self._ended = True
                    data = stream.unused_data
                else:
                    data = stream.unconsumed_tail
        except zlib.error as exc:
            raise InvalidRequestError(f"The request body is not valid {self.encoding} data: {exc}") from None
        return out

    def finish(self) -> None:
        if self._first or (self._stream is not None and not self._ended):
            raise InvalidRequestError(f"The request body ends in the middle of its {self.encoding} stream.")


def _encoding(request: Request) -> str:
    values = [v.strip().lower() for h in request.headers.getlist("content-encoding") for v in h.split(",")]
    codings = [("gzip" if v == "x-gzip" else v) for v in values if v and v != "identity"]
    if not codings:
        return "identity"
    if len(codings) > 1 or codings[0] not in SUPPORTED_ENCODINGS:
        raise UnsupportedMediaTypeError(
            f"Content-Encoding {', '.join(codings)!r} is not supported; use one of: {', '.join(SUPPORTED_ENCODINGS)}."
        )
    return codings[0]


async def body_pieces(request: Request, settings: Settings) -> AsyncIterator[bytes]:
    """The body as it arrives, each wait for its next piece bounded by `body_timeout`."""
    received = 0
    more = True
    while more:
        try:
            async with asyncio.timeout(settings.body_timeout):
                message = await request.receive()
        except TimeoutError:
            log.info("http.body_timeout path=%s received=%d", request.url.path, received)
            raise RequestTimeoutError(
                f"No part of the request body arrived for {settings.body_timeout:g} s.",
                headers={"connection": "close"},
            ) from None
        if message["type"] == "http.disconnect":
            raise BodyInterrupted(received)
        chunk: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        received += len(chunk)
        yield chunk


@contextlib.asynccontextmanager
async def create_body(request: Request, settings: Settings, budget: CreateBudget) -> AsyncIterator[bytearray]:
    """The decoded body in one buffer, its bytes reserved from `budget` until the block ends."""
    limit = settings.max_body_bytes
    too_large = RequestTooLargeError(f"Request exceeds the maximum allowed size of {limit:,} bytes.")
    encoding = _encoding(request)
    declared = request.headers.get("content-length")
    size: int | None = None
    if declared is not None:
        if not declared.isascii() or not declared.isdigit():
            raise InvalidRequestError("Invalid Content-Length header")
        size = int(declared)
        if size > limit:
            raise too_large
    decoder = None if encoding == "identity" else _Decoder(encoding)
    reserved = 0
    try:
        if size is not None and decoder is None:
            reserved = await budget.acquire(size)
        buffer = bytearray()
        async for chunk in body_pieces(request, settings):
            pieces = [chunk] if decoder is None else decoder.feed(chunk, limit - len(buffer))
            for piece in pieces:
                needed = len(buffer) + len(piece)
                if needed > limit:
                    raise too_large
                # A body larger than the whole budget may still go, alone, once it holds all of it.
                if needed > reserved and reserved < budget.limit:
                    reserved += await budget.acquire(min(max(_STEP, needed - reserved), budget.limit - reserved))
                buffer += piece
        if decoder is not None:
            decoder.finish()
        yield buffer
    finally:
        if reserved:
            budget.release(reserved)
