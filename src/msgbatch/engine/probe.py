"""The worker's own small HTTP port (`msgbatch worker --metrics-port PORT`): what Prometheus and an
orchestrator's probes read from a process that has no API.

    GET /metrics   the process's metrics (text format 0.0.4), as `msgbatch serve` has them
    GET /health    {"status":"ok"} while the process runs
    GET /ready     {"status":"ready"}, or 503 when the database does not answer

A plain asyncio server, one request per connection: a scrape every few seconds needs nothing more,
and it leaves the process's signal handling to the worker (an ASGI server would install its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from msgbatch.metrics import CONTENT_TYPE, Metrics
from msgbatch.store import Store

log = logging.getLogger("msgbatch.probe")

_MAX_HEAD = 16 * 1024


class ProbeServer:
    def __init__(self, metrics: Metrics, store: Store, *, host: str, port: int) -> None:
        self.metrics = metrics
        self.store = store
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        log.info("probe.listening url=http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, path, *_ = [*head.split(b"\r\n", 1)[0].split(b" "), b"", b""]
            status, media_type, body = await self._answer(method.decode("latin-1"), path.decode("latin-1"))
            writer.write(
                f"HTTP/1.1 {status}\r\ncontent-type: {media_type}\r\ncontent-length: {len(body)}\r\n"
                "connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass
        except Exception:
            log.exception("probe.failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, method: str, target: str) -> tuple[str, str, bytes]:
        path = target.split("?", 1)[0]
        json = "application/json"
        if method != "GET":
            return "405 Method Not Allowed", json, b'{"error":"method not allowed"}'
        if path == "/metrics":
            await self.metrics.refresh()
            return "200 OK", CONTENT_TYPE, self.metrics.render()
        if path == "/health":
            return "200 OK", json, b'{"status":"ok"}'
        if path == "/ready":
            try:
                await self.store.ping()
            except Exception:
                return "503 Service Unavailable", json, b'{"status":"database unreachable"}'
            return "200 OK", json, b'{"status":"ready"}'
        return "404 Not Found", json, b'{"error":"not found"}'
