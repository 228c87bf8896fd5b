"""msgbatch.testing: the free-port and wait-until-it-answers helpers that tests and bench/ share."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from msgbatch.testing import ServerDidNotAnswer, free_port, wait_until_answers


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_free_port_is_outside_the_range_of_outgoing_connections() -> None:
    # An outgoing connection's local port comes from that range: it could take the port meanwhile.
    low, high = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = {free_port() for _ in range(20)}
    assert all(10_000 <= port < low or port > high for port in ports), ports
    assert len(ports) > 1  # picked at random, not one fixed port


def test_waits_for_the_status_asked(server: str) -> None:
    wait_until_answers(f"{server}/health")
    wait_until_answers(f"{server}/missing", status=None)  # any answer will do
    with pytest.raises(ServerDidNotAnswer, match=r"/missing did not answer 200 within 0.3s \(it answered 404\)"):
        wait_until_answers(f"{server}/missing", timeout=0.3)


def test_gives_up_on_nothing_listening() -> None:
    with pytest.raises(ServerDidNotAnswer, match=r"did not answer 200 within 0\.2s"):
        wait_until_answers(f"http://127.0.0.1:{free_port()}/health", timeout=0.2)


def test_fails_as_soon_as_the_server_process_exits() -> None:
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    try:
        with pytest.raises(ServerDidNotAnswer, match="the server exited with status 3"):
            wait_until_answers(f"http://127.0.0.1:{free_port()}/health", process=process, timeout=60)
    finally:
        process.wait()
