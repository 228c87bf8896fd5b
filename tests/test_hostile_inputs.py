"""Hostile input, in process and against a real `msgbatch serve`: each case gets a status, the API's
error body with a request id, and stores nothing.

The real server covers what only the HTTP layer sees: an oversized or endless request head,
malformed framing, slow clients, clients that leave mid-upload, 256 MiB + 1 byte streamed without
a Content-Length. The rest runs in process over the ASGI transport.
"""

from __future__ import annotations

import asyncio
import gzip
import re
import socket
import threading
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import msgspec
import pytest

from conftest import ServeProcess, make_settings, raw_client, running_server, simple_request, wait_ended
from msgbatch.api.app import MsgBatchServer

KEY = "sk-hostile"
AUTH = {"x-api-key": KEY}
B = "/v1/messages/batches"
REQUEST_ID = re.compile(r"^req_[0-9A-Za-z]+$")
NOT_FOUND = "Message Batch ID not found."
MIB = 1024 * 1024


def check_error(status: int, headers: dict[str, str], body: bytes, expected: int, error_type: str) -> str:
    """The one error shape, with the request id in the header and the body alike; returns the message."""
    assert status == expected, (status, body[:500])
    assert headers["content-type"].startswith("application/json"), headers
    parsed = msgspec.json.decode(body)
    assert set(parsed) == {"type", "error", "request_id"} and parsed["type"] == "error", parsed
    assert set(parsed["error"]) == {"type", "message"} and parsed["error"]["type"] == error_type, parsed
    assert REQUEST_ID.match(parsed["request_id"]) and headers["request-id"] == parsed["request_id"], parsed
    assert headers.get("cache-control") == "no-store"
    message: str = parsed["error"]["message"]
    assert message
    return message


def check(resp: httpx2.Response, expected: int, error_type: str) -> str:
    return check_error(resp.status_code, dict(resp.headers), resp.content, expected, error_type)


# -- in process ------------------------------------------------------------------------------


@pytest.fixture
async def srv(tmp_path: Path) -> AsyncIterator[MsgBatchServer]:
    async with running_server(make_settings(tmp_path, workspaces={"hostile": [KEY], "other": ["sk-other"]})) as s:
        yield s


@pytest.fixture
async def http(srv: MsgBatchServer) -> AsyncIterator[httpx2.AsyncClient]:
    async with raw_client(srv) as client:
        yield client


async def stored(http: httpx2.AsyncClient) -> list[str]:
    resp = await http.get(B, headers=AUTH, params={"limit": "1000"})
    assert resp.status_code == 200
    return [b["id"] for b in resp.json()["data"]]


def _body(*custom_ids: Any, params: Any = None) -> dict[str, Any]:
    p = simple_request("x")["params"] if params is None else params
    return {"requests": [{"custom_id": c, "params": p} for c in custom_ids]}


BODIES: dict[str, bytes] = {
    "invalid-json": b'{"requests": [',
    "trailing-garbage": msgspec.json.encode(_body("a")) + b"}",
    "empty": b"",
    "array": b"[]",
    "string": b'"requests"',
    "number": b"42",
    "null": b"null",
    "true": b"true",
    "requests-object": b'{"requests": {}}',
    "requests-empty": b'{"requests": []}',
    "request-number": b'{"requests": [1]}',
    "params-array": msgspec.json.encode(_body("a", params=[])),
    "params-string": msgspec.json.encode(_body("a", params="hi")),
    "params-null": msgspec.json.encode(_body("a", params=None)).replace(b'"params":{', b'"params":null,"x":{'),
    "invalid-utf8-custom-id": b'{"requests": [{"custom_id": "a\xff", "params": {}}]}',
    "nul-custom-id": b'{"requests": [{"custom_id": "a\\u0000b", "params": {}}]}',
    "lone-surrogate-custom-id": b'{"requests": [{"custom_id": "\\ud800", "params": {}}]}',
    "bom": b"\xef\xbb\xbf" + msgspec.json.encode(_body("a")),
}
ODD_CUSTOM_IDS: list[Any] = [
    "",
    "x" * 65,
    "has space",
    "a.b",
    "a/b",
    "../etc",
    "caf\u00e9",
    "\uff41",  # fullwidth a
    "abc\n",
    "tab\t",
    "\u202eevil",
    12,
    None,
    [],
    {},
    True,
]


@pytest.mark.parametrize("name", list(BODIES))
async def test_bodies_that_are_not_a_create(http: httpx2.AsyncClient, name: str) -> None:
    resp = await http.post(B, headers={**AUTH, "content-type": "application/json"}, content=BODIES[name])
    check(resp, 400, "invalid_request_error")
    assert await stored(http) == []


@pytest.mark.parametrize("custom_id", ODD_CUSTOM_IDS, ids=repr)
async def test_odd_custom_ids(http: httpx2.AsyncClient, custom_id: Any) -> None:
    message = check(await http.post(B, headers=AUTH, json=_body("ok", custom_id)), 400, "invalid_request_error")
    assert message.startswith("requests.1.custom_id"), message
    assert await stored(http) == []


async def test_duplicate_and_boundary_custom_ids(http: httpx2.AsyncClient) -> None:
    check(await http.post(B, headers=AUTH, json=_body("a", "b", "a")), 400, "invalid_request_error")
    assert await stored(http) == []
    # The limits themselves are fine.
    edge = ["x" * 64, "-", "_", "A-z_09"]
    resp = await http.post(B, headers=AUTH, json=_body(*edge))
    assert resp.status_code == 200, resp.text
    assert await stored(http) == [resp.json()["id"]]


async def test_100_001_requests(http: httpx2.AsyncClient) -> None:
    body = msgspec.json.encode(_body(*(f"r{i}" for i in range(100_001)), params={}))
    message = check(await http.post(B, headers=AUTH, content=body), 400, "invalid_request_error")
    assert message == "requests: List should have at most 100,000 items after validation, not 100,001"
    assert await stored(http) == []


ODD_IDS = [
    "not-a-batch",
    "msgbatch_" + "0" * 24,  # the right shape, but no such batch
    "msgbatch_" + "0" * 25,
    "msgbatch_" + "!" * 24,
    "MSGBATCH_" + "0" * 24,
    "%2e%2e",
    "%00",
    "msgbatch_%00" + "0" * 23,
    "%C3%A9" * 10,
    "x" * 10_000,
    "'%20OR%20'1'='1",
]


@pytest.mark.parametrize("batch_id", ODD_IDS, ids=lambda v: v[:30])
@pytest.mark.parametrize(
    ("method", "suffix"),
    [("GET", ""), ("DELETE", ""), ("POST", "/cancel"), ("GET", "/results"), ("GET", "/stats")],
    ids=["retrieve", "delete", "cancel", "results", "stats"],
)
async def test_odd_batch_ids_in_paths(http: httpx2.AsyncClient, batch_id: str, method: str, suffix: str) -> None:
    resp = await http.request(method, f"{B}/{batch_id}{suffix}", headers=AUTH)
    assert check(resp, 404, "not_found_error") in (NOT_FOUND, "Not found")


@pytest.mark.parametrize(
    "path",
    [f"{B}/", f"{B}/{{id}}/", f"{B}/{{id}}/cancel/", f"{B}/{{id}}/results/", f"{B}//{{id}}", "/health/"],
)
async def test_trailing_slashes_are_404_not_a_redirect(http: httpx2.AsyncClient, path: str) -> None:
    made = await http.post(B, headers=AUTH, json=_body("a"))
    batch_id = made.json()["id"]
    for method in ("GET", "POST", "DELETE"):
        resp = await http.request(method, path.format(id=batch_id), headers={**AUTH, "host": "evil.example"})
        check(resp, 404, "not_found_error")
        assert "location" not in resp.headers


@pytest.mark.parametrize(
    ("limit", "status"),
    [
        ("1", 200),
        ("1000", 200),
        ("0005", 200),
        ("0", 400),
        ("1001", 400),
        ("-1", 400),
        ("", 400),
        ("ten", 400),
        ("2.5", 400),
        ("1e3", 400),
        (" 5", 400),
        ("+5", 400),
        ("1_0", 400),
        ("\u0663", 400),  # ARABIC-INDIC DIGIT THREE: int() would take it
        ("9" * 30, 400),
        ("9" * 5000, 400),  # int() refuses over 4,300 digits with a ValueError of its own
    ],
)
async def test_limit_edges(http: httpx2.AsyncClient, limit: str, status: int) -> None:
    resp = await http.get(B, headers=AUTH, params={"limit": limit})
    if status == 200:
        assert resp.status_code == 200 and resp.json()["data"] == [], resp.text
    else:
        assert check(resp, 400, "invalid_request_error").startswith("limit: ")


@pytest.mark.parametrize("cursor", ["x", "msgbatch_", "msgbatch_" + "0" * 23 + "\x00", "\u00e9" * 24])
async def test_odd_cursors(http: httpx2.AsyncClient, cursor: str) -> None:
    for name in ("after_id", "before_id"):
        resp = await http.get(B, headers=AUTH, params={name: cursor})
        assert check(resp, 400, "invalid_request_error").startswith(f"{name}: ")


@pytest.mark.parametrize("value", ["", "unknown", "SUCCEEDED", "succeeded,errored"])
async def test_odd_result_type_filters(http: httpx2.AsyncClient, value: str) -> None:
    made = await http.post(B, headers=AUTH, json=_body("a"))
    resp = await http.get(f"{B}/{made.json()['id']}/results", headers=AUTH, params={"type": value})
    assert check(resp, 400, "invalid_request_error").startswith("type: ")


async def test_405_names_every_allowed_method(http: httpx2.AsyncClient) -> None:
    made = await http.post(B, headers=AUTH, json=_body("a"))
    batch_id = made.json()["id"]
    for method, path, allow in [
        ("PUT", B, "GET, HEAD, POST"),
        ("PATCH", f"{B}/{batch_id}", "DELETE, GET, HEAD"),
        ("GET", f"{B}/{batch_id}/cancel", "POST"),
        ("DELETE", f"{B}/{batch_id}/results", "GET, HEAD"),
        ("POST", "/health", "GET, HEAD"),
    ]:
        resp = await http.request(method, path, headers=AUTH)
        check(resp, 405, "invalid_request_error")
        assert resp.headers["allow"] == allow, (method, path)


# -- compressed create bodies ----------------------------------------------------------------


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(data) + compressor.flush()


VALID = msgspec.json.encode(_body("a", "b"))
ENCODED = {
    "gzip": ("gzip", gzip.compress(VALID)),
    "x-gzip": ("x-gzip", gzip.compress(VALID)),
    "gzip-two-members": ("gzip", gzip.compress(VALID[:20]) + gzip.compress(VALID[20:])),
    "deflate-zlib": ("deflate", zlib.compress(VALID)),
    "deflate-raw": ("deflate", raw_deflate(VALID)),
    "gzip-identity": ("gzip, identity", gzip.compress(VALID)),
    "upper-case": ("GZIP", gzip.compress(VALID)),
}


@pytest.mark.parametrize("name", list(ENCODED))
async def test_compressed_creates(http: httpx2.AsyncClient, name: str) -> None:
    encoding, content = ENCODED[name]
    resp = await http.post(B, headers={**AUTH, "content-encoding": encoding}, content=content)
    assert resp.status_code == 200, resp.text
    assert resp.json()["request_counts"]["processing"] == 2


BAD_ENCODED = {
    "br": ("br", b"\x1b\x00", 415),
    "zstd": ("zstd", b"(\xb5/\xfd", 415),
    "compress": ("compress", b"\x1f\x9d", 415),
    "gzip-twice": ("gzip, gzip", gzip.compress(gzip.compress(VALID)), 415),
    "not-gzip": ("gzip", VALID, 400),
    "truncated-gzip": ("gzip", gzip.compress(VALID)[:-12], 400),
    "gzip-then-garbage": ("gzip", gzip.compress(VALID) + b"garbage!", 400),
    "deflate-then-garbage": ("deflate", zlib.compress(VALID) + b"x", 400),
    "not-deflate": ("deflate", b"\xff" * 40, 400),
    "gzip-of-bad-json": ("gzip", gzip.compress(b'{"requests": ['), 400),
}


@pytest.mark.parametrize("name", list(BAD_ENCODED))
async def test_bad_compressed_creates(http: httpx2.AsyncClient, name: str) -> None:
    encoding, content, status = BAD_ENCODED[name]
    resp = await http.post(B, headers={**AUTH, "content-encoding": encoding}, content=content)
    message = check(resp, status, "invalid_request_error")
    if status == 415:
        assert "gzip, deflate, identity" in message
    assert await stored(http) == []


def zeros_compressed(size: int, wbits: int) -> bytes:
    compressor = zlib.compressobj(wbits=wbits)
    chunk = bytes(MIB)
    parts = [compressor.compress(chunk) for _ in range(size // MIB)]
    return b"".join(parts) + compressor.flush()


@pytest.mark.parametrize(("encoding", "wbits"), [("gzip", 31), ("deflate", 15), ("deflate", -15)])
async def test_decompression_bomb_is_413_within_the_limit(tmp_path: Path, encoding: str, wbits: int) -> None:
    # 256 MiB of zeros in a ~260 kB body, against a 2 MiB limit: refused after decoding ~2 MiB.
    bomb = zeros_compressed(256 * MIB, wbits)
    assert len(bomb) < 300_000
    settings = make_settings(tmp_path, workspaces={"hostile": [KEY]}, max_body_bytes=2 * MIB)
    async with running_server(settings) as s, raw_client(s) as client:
        tracemalloc.start()
        try:
            resp = await client.post(B, headers={**AUTH, "content-encoding": encoding}, content=bomb)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert check(resp, 413, "request_too_large") == "Request exceeds the maximum allowed size of 2,097,152 bytes."
        assert peak < 16 * MIB, peak  # the limit and a few buffers, never the 256 MiB
        assert await stored(client) == []


async def test_decoded_size_counts_not_the_compressed_one(tmp_path: Path) -> None:
    body = msgspec.json.encode(_body(*(f"r{i}" for i in range(200))))
    settings = make_settings(tmp_path, workspaces={"hostile": [KEY]}, max_body_bytes=len(body))
    async with running_server(settings) as s, raw_client(s) as client:
        ok = await client.post(B, headers={**AUTH, "content-encoding": "gzip"}, content=gzip.compress(body))
        assert ok.status_code == 200, ok.text
        over = body[:-2] + b" ]}"  # one byte more once decoded, still a few hundred compressed
        resp = await client.post(B, headers={**AUTH, "content-encoding": "gzip"}, content=gzip.compress(over))
        check(resp, 413, "request_too_large")
        assert await stored(client) == [ok.json()["id"]]


@pytest.mark.parametrize("wbits", [15, -15, 31])
async def test_compressed_bodies_arriving_a_byte_at_a_time(http: httpx2.AsyncClient, wbits: int) -> None:
    compressor = zlib.compressobj(wbits=wbits)
    content = compressor.compress(VALID) + compressor.flush()

    async def trickle() -> AsyncIterator[bytes]:
        for i in range(len(content)):
            yield content[i : i + 1]

    encoding = "gzip" if wbits == 31 else "deflate"
    resp = await http.post(B, headers={**AUTH, "content-encoding": encoding}, content=trickle())
    assert resp.status_code == 200, resp.text


class GzipTransport(httpx2.AsyncBaseTransport):
    """Compresses every request body on its way to the app, as a gzip-sending client would."""

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self.inner = inner
        self.compressed = 0

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        body = await request.aread()
        if body:
            body = gzip.compress(body)
            self.compressed += 1
            request.headers["content-encoding"] = "gzip"
            request.headers["content-length"] = str(len(body))
            request.stream = httpx2.ByteStream(body)
            request._content = body
        return await self.inner.handle_async_request(request)


async def test_the_sdk_sending_gzip(srv: MsgBatchServer) -> None:
    transport = GzipTransport(httpx2.ASGITransport(app=srv.app))
    client = anthropic.AsyncAnthropic(
        api_key=KEY,
        base_url="http://testserver",
        http_client=httpx2.AsyncClient(transport=transport, base_url="http://testserver"),
        _strict_response_validation=True,
        max_retries=0,
    )
    async with client:
        batch = await client.messages.batches.create(requests=[simple_request(f"r{i}") for i in range(50)])  # type: ignore[misc]
        ended = await wait_ended(client, batch.id)
        assert ended.request_counts.succeeded == 50
        results = [r async for r in await client.messages.batches.results(batch.id)]
        assert sorted(r.custom_id for r in results) == sorted(f"r{i}" for i in range(50))
    assert transport.compressed == 1


# -- against a real `msgbatch serve` ---------------------------------------------------------


@dataclass
class Raw:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_response(data: bytes) -> Raw:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return Raw(status, headers, body)


def read_all(sock: socket.socket, timeout: float = 15.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def exchange(port: int, data: bytes, timeout: float = 15.0) -> Raw:
    """Send `data` on a new connection and read until the server closes it (or `timeout`)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(data)
        return parse_response(read_all(sock, timeout))


def check_raw(raw: Raw, status: int, error_type: str) -> str:
    return check_error(raw.status, raw.headers, raw.body, status, error_type)


def memory_of(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in bytes."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    env = {
        "MSGBATCH_API_KEYS": f"{KEY}=hostile,sk-ok=ok",
        "MSGBATCH_HEADER_TIMEOUT": "1s",
        "MSGBATCH_BODY_TIMEOUT": "1s",
    }
    proc = ServeProcess(tmp_path_factory.mktemp("hostile"), env=env).start()
    try:
        yield proc
    finally:
        proc.stop()
        log = proc.log.read_text()
        # Hostile clients are not bugs: no traceback, nothing at ERROR, from any case in this module.
        assert "Traceback" not in log and " ERROR " not in log, log[-5000:]


def served_batches(serve: ServeProcess) -> list[str]:
    resp = httpx2.get(f"{serve.base_url}{B}", headers=AUTH, params={"limit": 1000}, timeout=10)
    assert resp.status_code == 200
    return [b["id"] for b in resp.json()["data"]]


def request_head(method: str, path: str, *headers: str) -> bytes:
    return "\r\n".join([f"{method} {path} HTTP/1.1", "host: 127.0.0.1", *headers, "", ""]).encode()


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
