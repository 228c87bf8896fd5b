"""Hostile input to the API, in process: each case gets a status and the API's error body with a
request id, and stores nothing. (What only the HTTP layer sees -- oversized or endless heads,
malformed framing, slow clients, 256 MiB + 1 streamed -- is in tests/acceptance/test_hostile_http.py,
against a real `msgbatch serve`.)
"""

from __future__ import annotations

import gzip
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import msgspec
import pytest

from conftest import make_settings, raw_client, running_server, simple_request, wait_ended
from http_checks import check
from msgbatch.api.app import MsgBatchServer

KEY = "sk-hostile"
AUTH = {"x-api-key": KEY}
B = "/v1/messages/batches"
NOT_FOUND = "Message Batch ID not found."
MIB = 1024 * 1024


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
    # 64 MiB of zeros in a ~65 kB body, against a 2 MiB limit: refused after decoding ~2 MiB.
    bomb = zeros_compressed(64 * MIB, wbits)
    assert len(bomb) < 80_000
    settings = make_settings(tmp_path, workspaces={"hostile": [KEY]}, max_body_bytes=2 * MIB)
    async with running_server(settings) as s, raw_client(s) as client:
        tracemalloc.start()
        try:
            resp = await client.post(B, headers={**AUTH, "content-encoding": encoding}, content=bomb)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert check(resp, 413, "request_too_large") == "Request exceeds the maximum allowed size of 2,097,152 bytes."
        assert peak < 16 * MIB, peak  # the limit and a few buffers, never the 64 MiB
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
