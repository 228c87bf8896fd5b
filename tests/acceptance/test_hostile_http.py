"""Hostile clients against a real `msgbatch serve`: what only the HTTP layer sees.

An oversized or endless request head, malformed framing, slow clients, clients that leave
mid-upload, 256 MiB + 1 byte streamed without a Content-Length, Upgrade requests. Each gets a
status, the API's error body with a request id, and stores nothing; the server logs no ERROR.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import msgspec
import pytest

from conftest import ServeProcess, simple_request, wait_ended
from http_checks import check, check_raw, exchange, memory_of, parse_response, read_all, request_head

KEY = "sk-hostile"
AUTH = {"x-api-key": KEY}
B = "/v1/messages/batches"
MIB = 1024 * 1024


def _body(*custom_ids: Any) -> dict[str, Any]:
    return {"requests": [{"custom_id": c, "params": simple_request("x")["params"]} for c in custom_ids]}


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    env = {
        "MSGBATCH_API_KEYS": f"{KEY}=hostile,sk-ok=ok",
        "MSGBATCH_HEADER_TIMEOUT": "1s",
        "MSGBATCH_BODY_TIMEOUT": "1s",
    }
    with ServeProcess(tmp_path_factory.mktemp("hostile"), env=env) as proc:
        yield proc
        log = proc.log.read_text()
        # Hostile clients are not bugs: no traceback, nothing at ERROR, from any case in this module.
        assert "Traceback" not in log and " ERROR " not in log, log[-5000:]


def served_batches(serve: ServeProcess) -> list[str]:
    resp = httpx2.get(f"{serve.base_url}{B}", headers=AUTH, params={"limit": 1000}, timeout=10)
    assert resp.status_code == 200
    return [b["id"] for b in resp.json()["data"]]


MALFORMED = {
    "content-length-word": request_head("POST", B, f"x-api-key: {KEY}", "content-length: abc"),
    "content-length-negative": request_head("POST", B, f"x-api-key: {KEY}", "content-length: -1"),
    "content-length-twice": request_head("POST", B, f"x-api-key: {KEY}", "content-length: 1", "content-length: 2"),
    "content-length-and-chunked": request_head(
        "POST", B, f"x-api-key: {KEY}", "content-length: 5", "transfer-encoding: chunked"
    ),
    "bad-chunk-size": request_head("POST", B, f"x-api-key: {KEY}", "transfer-encoding: chunked") + b"zz\r\nab\r\n",
    "bad-header-name": request_head("GET", "/health", "bad header: x"),
    "nul-in-header": request_head("GET", "/health", "x-a: a\x00b"),
    "bad-request-line": b"GET\r\n\r\n",
    "not-http": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # a TLS hello
    "http2-prior-knowledge": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "raw-byte-in-url": b"GET /v1/messages/batches/\xff HTTP/1.1\r\nhost: x\r\n\r\n",
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_requests_get_the_api_error_body(serve: ServeProcess, name: str) -> None:
    raw = exchange(serve.port, MALFORMED[name])
    assert check_raw(raw, 400, "invalid_request_error").startswith("Invalid HTTP request: ")
    assert raw.headers["connection"] == "close"
    assert served_batches(serve) == []


def test_upgrade_requests(serve: ServeProcess) -> None:
    upgrade = ["connection: upgrade, http2-settings", "upgrade: h2c", "http2-settings: AAMAAABkAARAAAAAAAIAAAAA"]
    # With a body (curl --http2 on plain http:// sends this): the body would be lost, so refused.
    body = b'{"requests": [{"custom_id": "a", "params": {}}]}'
    head = request_head("POST", B, f"x-api-key: {KEY}", f"content-length: {len(body)}", *upgrade)
    message = check_raw(exchange(serve.port, head + body), 400, "invalid_request_error")
    assert message == "Upgrade is not supported: send the request without an Upgrade header."
    assert served_batches(serve) == []
    # Without one: plain HTTP/1.1.
    raw = exchange(serve.port, request_head("GET", "/health", "connection: upgrade", "upgrade: websocket"), 8)
    assert raw.status == 200 and raw.body == b'{"status":"ok"}'


def test_url_over_the_limit_is_414(serve: ServeProcess) -> None:
    raw = exchange(serve.port, request_head("GET", "/v1/" + "a" * 70_000))
    assert check_raw(raw, 414, "request_too_large") == "The URL exceeds 65,536 bytes."


def test_headers_over_the_limit_are_431(serve: ServeProcess) -> None:
    many = [f"x-h{i}: {'v' * 60}" for i in range(2_000)]
    raw = exchange(serve.port, request_head("GET", "/health", *many))
    assert check_raw(raw, 431, "request_too_large") == "The request line and headers exceed 65,536 bytes."
    # Just under the limit is fine.
    some = [f"x-h{i}: {'v' * 60}" for i in range(900)]
    assert exchange(serve.port, request_head("GET", "/health", "connection: close", *some)).status == 200


def test_the_header_limit_is_configurable(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path, env={"MSGBATCH_MAX_HEADER_BYTES": "2048"}).start()
    try:
        raw = exchange(server.port, request_head("GET", "/health", f"x-pad: {'p' * 2100}"))
        assert check_raw(raw, 431, "request_too_large") == "The request line and headers exceed 2,048 bytes."
        assert exchange(server.port, request_head("GET", "/health", "connection: close", "x-pad: p")).status == 200
    finally:
        server.stop()


def test_a_gzip_create_on_a_real_socket(serve: ServeProcess) -> None:
    body = gzip.compress(msgspec.json.encode(_body("a", "b")))
    head = request_head("POST", B, "x-api-key: sk-ok", "content-encoding: gzip", f"content-length: {len(body)}")
    raw = exchange(serve.port, head.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n") + body)
    assert raw.status == 200, raw.body
    assert msgspec.json.decode(raw.body)["request_counts"]["processing"] == 2


def test_path_traversal_on_a_real_socket_is_404(serve: ServeProcess) -> None:
    for path in [f"{B}/msgbatch_x/../", f"{B}/../batches/", f"{B}/./", f"{B}/%2e%2e/"]:
        raw = exchange(serve.port, request_head("GET", path, f"x-api-key: {KEY}", "connection: close"))
        check_raw(raw, 404, "not_found_error")
        assert "location" not in raw.headers


def test_one_huge_header_costs_a_bounded_amount(serve: ServeProcess) -> None:
    """Up to 256 MiB of header from each of four connections: each is refused after 64 KiB; the
    server reads and drops at most a few MiB more, its memory does not grow, and it keeps answering."""
    assert serve.proc is not None
    _, peak_before = memory_of(serve.proc.pid)
    outcomes: list[tuple[int, bytes]] = []

    def attack() -> None:
        with socket.create_connection(("127.0.0.1", serve.port)) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nx-big: ")
            chunk, sent = b"a" * MIB, 0
            try:
                while sent < 256 * MIB:
                    sock.sendall(chunk)
                    sent += len(chunk)
            except OSError:
                pass  # the server stopped reading: the point
            outcomes.append((sent, read_all(sock, 10)))

    attackers = [threading.Thread(target=attack) for _ in range(4)]
    for t in attackers:
        t.start()
    while any(t.is_alive() for t in attackers):
        assert httpx2.get(f"{serve.base_url}/health", timeout=10).status_code == 200
    for t in attackers:
        t.join()
    assert len(outcomes) == 4
    for sent, answer in outcomes:
        assert sent < 64 * MIB, f"the server took {sent / MIB:.0f} MiB of one header"
        if answer:  # the answer can be lost to a reset when the client never reads: never another one
            check_raw(parse_response(answer), 431, "request_too_large")
    _, peak_after = memory_of(serve.proc.pid)
    assert peak_after - peak_before < 32 * MIB, (peak_before, peak_after)


def test_a_connection_that_sends_nothing_is_closed(serve: ServeProcess) -> None:
    with socket.create_connection(("127.0.0.1", serve.port)) as sock:
        assert read_all(sock, 15) == b""  # closed (header_timeout 1 s), and nothing to answer


def test_a_head_that_never_ends_is_408(serve: ServeProcess) -> None:
    with socket.create_connection(("127.0.0.1", serve.port)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nx-slow: ")
        for _ in range(3):  # a byte now and then does not extend the deadline
            time.sleep(0.4)
            try:
                sock.sendall(b"a")
            except OSError:
                break
        message = check_raw(parse_response(read_all(sock)), 408, "timeout_error")
    assert message == "The request line and headers did not arrive within 1 s."


def test_a_body_that_stops_is_408_and_stores_nothing(serve: ServeProcess) -> None:
    with socket.create_connection(("127.0.0.1", serve.port)) as sock:
        sock.sendall(request_head("POST", B, f"x-api-key: {KEY}", "content-length: 1000000") + b'{"requests": [')
        raw = parse_response(read_all(sock))
    assert check_raw(raw, 408, "timeout_error") == "No part of the request body arrived for 1 s."
    assert raw.headers["connection"] == "close"
    assert served_batches(serve) == []


def test_a_body_nobody_reads_must_still_arrive_in_time(serve: ServeProcess) -> None:
    # The route answers at once (404) without reading; the rest of the declared megabyte never comes.
    with socket.create_connection(("127.0.0.1", serve.port)) as sock:
        sock.sendall(request_head("POST", f"{B}/nope/cancel", f"x-api-key: {KEY}", "content-length: 1000000") + b"x")
        raw = parse_response(read_all(sock, 15))  # returns once the server closes
    check_raw(raw, 404, "not_found_error")


def test_a_client_leaving_mid_upload_is_one_info_line(serve: ServeProcess) -> None:
    with socket.create_connection(("127.0.0.1", serve.port)) as sock:
        sock.sendall(request_head("POST", B, f"x-api-key: {KEY}", "content-length: 10000000"))
        sock.sendall(b'{"requests": [' + b" " * MIB)
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while "http.client_disconnected" not in serve.log.read_text():
        assert time.monotonic() < deadline, serve.log.read_text()[-3000:]
        time.sleep(0.05)
    lines = [line for line in serve.log.read_text().splitlines() if "http.client_disconnected" in line]
    assert len(lines) == 1 and " INFO " in lines[0] and "path=/v1/messages/batches" in lines[0], lines
    assert served_batches(serve) == []


def test_256_mib_and_one_byte_streamed_without_a_content_length(serve: ServeProcess) -> None:
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"requests": ['
        sent = 14
        while sent < 256 * MIB + 1:
            piece = b" " * min(MIB, 256 * MIB + 1 - sent)
            sent += len(piece)
            yield piece

    try:
        resp = httpx2.post(f"{serve.base_url}{B}", headers=AUTH, content=body(), timeout=60)
    except httpx2.TransportError:
        pytest.fail("the server should answer 413 and read the rest, not drop the connection")
    assert "content-length" not in resp.request.headers and resp.request.headers["transfer-encoding"] == "chunked"
    check(resp, 413, "request_too_large")
    assert served_batches(serve) == []


async def test_many_hostile_requests_leave_the_server_serving(serve: ServeProcess) -> None:
    # After everything above (module order): the server still creates and runs a batch.
    async with anthropic.AsyncAnthropic(api_key="sk-ok", base_url=serve.base_url, max_retries=0) as client:
        batch = await client.messages.batches.create(requests=[simple_request("a")])  # type: ignore[misc]
        assert (await wait_ended(client, batch.id)).request_counts.succeeded == 1
    assert served_batches(serve) == []  # the other workspace's batch is not the hostile one's
    await asyncio.sleep(0)


# -- behind a proxy ------------------------------------------------------------------------


def test_serve_refuses_a_bad_proxy_setting_before_binding(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "msgbatch", "serve", "--database", str(tmp_path / "x.db"), "--forwarded-allow-ips", "x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stderr
    assert "forwarded_allow_ips: 'x' is not an IP address or network" in run.stderr
    assert "listening" not in run.stderr


def test_a_real_server_behind_a_proxy(tmp_path: Path) -> None:
    # uvicorn's own proxy handling is off (it would make the X-Forwarded-For address the peer):
    # the peer is the socket's, and the flags decide.
    cases = [
        ((), "https://api.example.com/v2"),  # loopback is trusted by default
        (("--forwarded-allow-ips", "10.0.0.1"), None),
        (("--allowed-hosts", "other.example"), "refused"),
    ]
    for number, (args, base) in enumerate(cases):
        (tmp_path / str(number)).mkdir()
        server = ServeProcess(tmp_path / str(number), *args).start()
        try:
            headers = {
                **AUTH,
                "x-forwarded-for": "10.0.0.1",
                "x-forwarded-host": "api.example.com",
                "x-forwarded-proto": "https",
                "x-forwarded-prefix": "/v2",
            }
            resp = httpx2.get(f"{server.base_url}{B}/msgbatch_x", headers=headers, timeout=10)
            if base == "refused":
                assert resp.status_code == 400 and "'api.example.com' is not one" in resp.json()["error"]["message"]
                continue
            made = httpx2.post(
                f"{server.base_url}{B}", headers=headers, json={"requests": [simple_request("a")]}, timeout=10
            )
            assert made.status_code == 200, made.text
            got = made.json()
            for _ in range(500):
                if got["processing_status"] == "ended":
                    break
                got = httpx2.get(f"{server.base_url}{B}/{got['id']}", headers=headers, timeout=10).json()
            expected_base = base or server.base_url
            assert got["results_url"] == f"{expected_base}{B}/{got['id']}/results"
        finally:
            server.stop()
