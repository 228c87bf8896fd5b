"""A small keep-alive HTTP/1.1 client for the one thing backends do: POST JSON to one origin.

Why not httpx: at the concurrency a batch runs at, httpx's connection pool costs milliseconds of
CPU per request (it re-scans every connection, probing sockets, on each request and release:
about 270 requests/s at 128 connections on one core, whatever the upstream's speed). This client
keeps idle connections on a stack and does one write and two reads per request, which is what
lets msgbatch keep 128 requests in flight against a 100 ms upstream (see bench/bench_backends.py).
Nor aiohttp, tried in its place (one session per backend, tuned): on Python 3.11 it spends about
200 µs more CPU per request than this client (`msgbatch serve` as a whole, about 60 % more), and
the bench fell from a median of 0.93 of C/L to 0.88 (from 0.82-0.96 to 0.68-0.93 over the runs).
It speaks just enough HTTP/1.1 for inference servers and the hosted API: TLS, `content-length`
and `chunked` bodies, `connection: close`, 1xx interim answers. No proxies, no redirects, no
compression (it asks for none). A backend configured with `client = "httpx"` uses httpx instead
(honouring HTTP(S)_PROXY).

Errors: `ConnectFailed` when no connection could be opened, `TimeoutError` when the whole
exchange took longer than `timeout`, `OSError` / `ProtocolFault` / `asyncio.IncompleteReadError`
when the connection broke or the answer was not HTTP. A reused keep-alive connection that the
server had already closed is replaced and the request sent once more, as other clients do.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["ConnectFailed", "HTTPClient", "ProtocolFault", "RawResponse"]

_MAX_HEAD = 1 << 20


class ConnectFailed(OSError):
    """No connection to the upstream could be opened."""


class ProtocolFault(ValueError):
    """The upstream's answer is not HTTP/1.1 as this client understands it."""


class _Stale(Exception):
    """The connection was closed before any byte of the answer came back."""


@dataclass(slots=True)
class RawResponse:
    status: int
    reason: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    content: bytes


class _Connection:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def usable(self, now: float, expiry: float) -> bool:
        return not (self.reader.at_eof() or self.writer.is_closing() or now - self.idle_since > expiry)

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:  # closing a broken transport must not fail the caller
            pass


def _check_header(name: str, value: str) -> None:
    if any(c in name or c in value for c in "\r\n\0") or ":" in name:
        raise ValueError(f"header {name!r} holds a forbidden character")


class HTTPClient:
    def __init__(
        self,
        base_url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 600.0,
        connect_timeout: float = 30.0,
        max_connections: int = 64,
        keepalive_expiry: float = 4.0,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if parts.scheme == "https" else None
        self.base_path = parts.path.rstrip("/")
        self.timeout = timeout
        self.connect_timeout = min(connect_timeout, timeout)
        # Below the usual server-side keep-alive timeouts (uvicorn: 5 s), so a kept connection is
        # rarely one the server is closing.
        self.keepalive_expiry = keepalive_expiry
        fixed = {"host": parts.netloc.rpartition("@")[2], "accept": "application/json", **(headers or {})}
        for name, value in fixed.items():
            _check_header(name, value)
        self._fixed = "".join(f"{name}: {value}\r\n" for name, value in fixed.items()).encode("latin-1")
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._closed = False

    @property
    def connections(self) -> int:
        return len(self._open)

    async def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> RawResponse:
        extra = b""
        if headers:
            for name, value in headers.items():
                _check_header(name, value)
            extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode("latin-1")
        head = (
            f"POST {self.base_path}{path} HTTP/1.1\r\n".encode("latin-1")
            + self._fixed
            + extra
            + b"content-length: %d\r\n\r\n" % len(body)
        )
        async with self._slots, asyncio.timeout(self.timeout):
            for attempt in range(2):
                conn, reused = await self._checkout()
                try:
                    response, keep = await self._exchange(conn, head, body)
                except _Stale:
                    self._discard(conn)
                    if reused and attempt == 0:
                        continue  # the server had closed it while idle: once more on a new one
                    raise asyncio.IncompleteReadError(b"", None) from None
                except BaseException:
                    self._discard(conn)
                    raise
                if keep:
                    self._checkin(conn)
                else:
                    self._discard(conn)
                return response
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        self._closed = True
        for conn in list(self._open):
            self._discard(conn)
        self._idle.clear()

    # -- connections -------------------------------------------------------------------------

    async def _checkout(self) -> tuple[_Connection, bool]:
        if self._closed:
            raise ConnectFailed("client closed")
        now = asyncio.get_running_loop().time()
        while self._idle:
            conn = self._idle.pop()
            if conn.usable(now, self.keepalive_expiry):
                return conn, True
            self._discard(conn)
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                    limit=_MAX_HEAD,
                )
        except TimeoutError:
            raise ConnectFailed(f"connecting to {self.host}:{self.port} timed out") from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}") from None
        conn = _Connection(reader, writer)
        self._open.add(conn)
        return conn, False

    def _checkin(self, conn: _Connection) -> None:
        if self._closed:
            self._discard(conn)
            return
        now = asyncio.get_running_loop().time()
        conn.idle_since = now
        self._idle.append(conn)
        # The bottom of the stack is the longest idle: let it go once it is past its time.
        if len(self._idle) > 1 and now - self._idle[0].idle_since > self.keepalive_expiry:
            self._discard(self._idle.pop(0))

    def _discard(self, conn: _Connection) -> None:
        self._open.discard(conn)
        conn.close()

    # -- one exchange ------------------------------------------------------------------------

    async def _exchange(self, conn: _Connection, head: bytes, body: bytes) -> tuple[RawResponse, bool]:
        reader, writer = conn.reader, conn.writer
        try:
            writer.write(head + body)
            await writer.drain()
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise _Stale() from None
            raise
        except (ConnectionResetError, BrokenPipeError):
            raise _Stale() from None
        while True:
            status, reason, version, headers = _parse_head(raw)
            if not 100 <= status < 200 or status == 101:
                break
            raw = await reader.readuntil(b"\r\n\r\n")  # an interim answer (100 Continue): skip it
        keep = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            content = await _read_chunked(reader)
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise ProtocolFault("bad content-length") from None
            content = await reader.readexactly(length)
        elif status in (204, 304):
            content = b""
        else:
            content = await reader.read()  # delimited by the end of the connection
            keep = False
        return RawResponse(status, reason, headers, content), keep


def _parse_head(raw: bytes) -> tuple[int, str, str, dict[str, str]]:
    lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise ProtocolFault(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolFault("a header line without a colon")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return int(code), reason, version, headers


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        line = await reader.readuntil(b"\r\n")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ProtocolFault("bad chunk size") from None
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise ProtocolFault("a chunk not followed by CRLF")
