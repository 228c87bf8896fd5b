"""A fake inference server on loopback that speaks `POST /v1/messages`,
`POST /v1/chat/completions`, `POST /v1/completions` and `POST /v1/embeddings` over real HTTP/1.1
(keep-alive), and injects faults per request.

It is a raw asyncio server rather than an ASGI app so that it can do what a real upstream does
when it breaks: drop the connection mid-request, hang, or send a body that is not JSON.

Faults are planned per *key*, the text of the request's last user message (a plain string):
`fake.plan("k1", [429, 529, "reset"])` makes the first three attempts of that request fail that
way, then it succeeds. A fault is a status (`429`), a status with headers
(`(429, {"retry-after": "0.2"})`), `"timeout"` (hang for `hang` seconds), `"reset"` (close the
connection without answering), `"malformed"` (200 with a truncated body), `"html"` (502 with an
HTML page), `"garbage"` (an answer that is not HTTP) or `"truncated"` (the connection closes
halfway through the body). `capacity` answers `overload_status` to every request beyond that many
in flight. With `watch_disconnects`, a request whose client closes the connection while it is being
"generated" (the `latency`) stops there, as vLLM and llama.cpp stop generating: its call is marked
`cut`.

Used by the tests (in a thread: `with FakeUpstream() as fake`) and by the benchmark (as a
process: `python tests/fake_upstream.py --port 9000 --latency 0.1`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable
from typing import Any

Fault = int | tuple[int, dict[str, str]] | str

_REASONS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    408: "Request Timeout", 413: "Payload Too Large", 429: "Too Many Requests", 500: "Internal Server Error",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout", 529: "Overloaded",
}  # fmt: skip
_ANTHROPIC_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    413: "request_too_large", 429: "rate_limit_error", 500: "api_error", 529: "overloaded_error",
}  # fmt: skip


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def anthropic_answer(body: dict[str, Any]) -> dict[str, Any]:
    text = "echo: " + last_user_text(body.get("messages", []))
    return {
        "id": "msg_fake" + str(time.monotonic_ns()),
        "type": "message",
        "role": "assistant",
        "model": body.get("model"),
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        # Like llama.cpp and vLLM: no cache fields, no service_tier.
        "usage": {"input_tokens": 10, "output_tokens": len(text.split())},
    }


def chat_answer(body: dict[str, Any]) -> dict[str, Any]:
    text = "echo: " + last_user_text(body.get("messages", []))
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": len(text.split()), "total_tokens": 10},
    }


def completion_answer(body: dict[str, Any]) -> dict[str, Any]:
    text = "echo: " + str(body.get("prompt"))
    return {
        "id": "cmpl-fake",
        "object": "text_completion",
        "created": int(time.time()),
        "model": body.get("model"),
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": len(text.split()), "total_tokens": 3 + len(text.split())},
    }


def embedding_answer(body: dict[str, Any]) -> dict[str, Any]:
    inputs = body.get("input")
    items = inputs if isinstance(inputs, list) else [inputs]
    vector = [1.0] + [0.0] * (body.get("dimensions", 4) - 1)
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": vector} for i in range(len(items))],
        "model": body.get("model"),
        "usage": {"prompt_tokens": len(items), "total_tokens": len(items)},
    }


class Call:
    """One request the fake received."""

    def __init__(self, path: str, headers: dict[str, str], body: Any, at: float) -> None:
        self.path = path
        self.headers = headers
        self.body = body
        self.at = at
        self.cut = False  # the client went away before the answer was sent

    @property
    def key(self) -> str:
        if not isinstance(self.body, dict):
            return ""
        if "messages" not in self.body:  # a completion's prompt, an embedding's input
            return str(self.body.get("prompt", self.body.get("input", "")))
        return last_user_text(self.body.get("messages", []))


class FakeUpstream:
    def __init__(
        self,
        *,
        latency: float = 0.0,
        hang: float = 5.0,
        capacity: int | None = None,
        overload_status: int = 529,
        record: bool = True,
        watch_disconnects: bool = False,
    ) -> None:
        self.latency = latency
        self.hang = hang
        self.capacity = capacity
        self.overload_status = overload_status
        self.record = record
        self.watch_disconnects = watch_disconnects
        self.cut = 0  # requests whose client went away while they were being generated
        self.chunked = False  # answer 200s with transfer-encoding: chunked
        self.calls: list[Call] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.overloaded = 0
        self.served = 0
        self.connections = 0  # connections accepted so far
        # Answer builders by path; a test may replace them to craft answers.
        self.answer: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "/v1/messages": anthropic_answer,
            "/v1/chat/completions": chat_answer,
            "/v1/completions": completion_answer,
            "/v1/embeddings": embedding_answer,
        }
        self._plans: dict[str, list[Fault]] = {}
        self._lock = threading.Lock()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._writers: set[asyncio.StreamWriter] = set()

    # -- what tests use ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def plan(self, key: str, faults: list[Fault]) -> None:
        with self._lock:
            self._plans[key] = list(faults)

    def drop_idle(self) -> None:
        """Close every open connection, as a server does with idle keep-alive connections."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(lambda: [w.transport.abort() for w in list(self._writers)])

    def pause(self) -> None:
        """Stop: close the listening socket and every connection (a restart: connections refused)."""
        assert self._loop is not None
        done = threading.Event()

        def stop() -> None:
            if self._server is not None:
                self._server.close()
                self._server = None
            for writer in list(self._writers):
                writer.transport.abort()
            done.set()

        self._loop.call_soon_threadsafe(stop)
        done.wait(5)

    def resume(self) -> None:
        """Listen again, on the same port."""
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self.serve(port=self.port), self._loop).result(5)

    def calls_for(self, key: str) -> list[Call]:
        return [c for c in list(self.calls) if c.key == key]

    # -- serving -----------------------------------------------------------------------------

    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> asyncio.base_events.Server:
        self._server = await asyncio.start_server(self._connection, host, port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        return self._server

    def __enter__(self) -> FakeUpstream:
        self._thread = threading.Thread(target=self._run, daemon=True, name="fake-upstream")
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake upstream did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._shutdown)
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        loop.run_until_complete(self.serve())
        self._ready.set()
        loop.run_forever()
        pending = asyncio.all_tasks(loop)

        async def drain() -> None:
            await asyncio.gather(*pending, return_exceptions=True)

        loop.run_until_complete(drain())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    def _shutdown(self) -> None:
        assert self._loop is not None
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        self._loop.call_later(0.05, self._loop.stop)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                _method, path, _version = lines[0].split(" ", 2)
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                raw = await reader.readexactly(int(headers.get("content-length", "0")))
                keep = await self._handle(path, headers, raw, writer, reader)
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _handle(
        self,
        path: str,
        headers: dict[str, str],
        raw: bytes,
        writer: asyncio.StreamWriter,
        reader: asyncio.StreamReader | None = None,
    ) -> bool:
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        call = Call(path, headers, body, time.monotonic())
        if self.record:
            self.calls.append(call)
        fault: Fault | None = None
        key = call.key
        with self._lock:
            planned = self._plans.get(key)
            if planned:
                fault = planned.pop(0)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.capacity is not None and self.in_flight > self.capacity and fault is None:
                self.overloaded += 1
                fault = self.overload_status
            if self.latency:
                if self.watch_disconnects and reader is not None:
                    if await self._client_left(reader, self.latency):
                        call.cut = True
                        self.cut += 1
                        return False
                else:
                    await asyncio.sleep(self.latency)
            if fault == "reset":
                writer.transport.abort()
                return False
            if fault == "timeout":
                await asyncio.sleep(self.hang)
                fault = None
            if fault == "malformed":
                await self._send(writer, 200, b'{"id": "msg_01", "type": "mess')
                return True
            if fault == "garbage":
                writer.write(b"SSH-2.0-OpenSSH_9.6\r\nnot an answer\r\n\r\n")
                await writer.drain()
                return False
            if fault == "truncated":
                writer.write(b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"id"')
                await writer.drain()
                return False
            if fault == "html":
                await self._send(writer, 502, b"<html><body>Bad gateway</body></html>", ctype="text/html")
                return True
            if fault is not None:
                status, extra = fault if isinstance(fault, tuple) else (int(fault), {})
                await self._send(writer, status, self._error(path, status), extra)
                return True
            builder = self.answer.get(path)
            if builder is None or not isinstance(body, dict):
                await self._send(writer, 404, self._error(path, 404))
                return True
            self.served += 1
            payload = json.dumps(builder(body)).encode()
            if self.chunked:
                half = len(payload) // 2
                chunks = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in (payload[:half], payload[half:]))
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
                    + chunks
                    + b"0\r\nx-trailer: 1\r\n\r\n"
                )
                await writer.drain()
            else:
                await self._send(writer, 200, payload)
            return True
        finally:
            self.in_flight -= 1

    @staticmethod
    async def _client_left(reader: asyncio.StreamReader, seconds: float) -> bool:
        """Take `seconds`, unless the client closes the connection first (then True)."""
        eof = asyncio.ensure_future(reader.read(1))  # clients here never pipeline: nothing else comes
        try:
            await asyncio.wait({eof}, timeout=seconds)
        finally:
            if not eof.done():
                eof.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await eof
        return eof.done() and not eof.cancelled() and eof.exception() is None and eof.result() == b""

    @staticmethod
    def _error(path: str, status: int) -> bytes:
        message = f"fake upstream says {status}"
        if path == "/v1/messages":
            etype = _ANTHROPIC_TYPES.get(status, "api_error")
            return json.dumps({"type": "error", "error": {"type": etype, "message": message}}).encode()
        return json.dumps({"error": {"message": message, "type": "upstream_error", "code": status}}).encode()

    @staticmethod
    async def _send(
        writer: asyncio.StreamWriter,
        status: int,
        payload: bytes,
        extra: dict[str, str] | None = None,
        ctype: str = "application/json",
    ) -> None:
        head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\ncontent-type: {ctype}\r\n"
        head += f"content-length: {len(payload)}\r\n"
        for name, value in (extra or {}).items():
            head += f"{name}: {value}\r\n"
        writer.write(head.encode() + b"\r\n" + payload)
        await writer.drain()


def _main() -> None:
    parser = argparse.ArgumentParser(description="A fake Anthropic/OpenAI-compatible upstream with fixed latency.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.1)
    args = parser.parse_args()
    fake = FakeUpstream(latency=args.latency, record=False)

    async def run() -> None:
        server = await fake.serve(port=args.port)
        print(f"fake upstream on {fake.url} latency={args.latency}", flush=True)
        async with server:
            await server.serve_forever()

    try:
        import uvloop

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())


if __name__ == "__main__":
    _main()
