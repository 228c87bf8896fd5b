"""A real HTTP receiver of webhooks on loopback, in a thread: it keeps every delivery it gets and
answers as told (`answers`: statuses to give, in order, then 204; "hang" waits `hang` seconds
before answering 204, longer than a sender's timeout). `verified()` checks each delivery's
signature with the `standardwebhooks` package, an implementation independent of msgbatch's.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook

from msgbatch.testing import free_port

SECRET = "whsec_" + base64.b64encode(b"a test secret of thirty-two byte").decode()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def event(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value


class Receiver:
    def __init__(self, *, port: int | None = None, answers: list[int | str] | None = None, hang: float = 3.0) -> None:
        self.port = port or free_port()
        self.answers: list[int | str] = list(answers or [])
        self.hang = hang
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver._lock:
                    receiver.received.append(
                        Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time())
                    )
                    answer = receiver.answers.pop(0) if receiver.answers else 204
                if answer == "hang":
                    time.sleep(receiver.hang)
                    answer = 204
                self.send_response(int(answer))
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="webhook-receiver")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def events(self, kind: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.received if kind is None or r.event.get("type") == kind]

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.received)} deliveries arrived, not {count}: {self.received}")
            time.sleep(0.02)
        return list(self.received)

    def verified(self, secret: str = SECRET) -> list[dict[str, Any]]:
        """Every delivery's payload, each signature checked by `standardwebhooks` (raises if one fails)."""
        webhook = Webhook(secret)
        return [webhook.verify(r.body, r.headers) for r in self.received]
