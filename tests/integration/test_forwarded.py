"""results_url never follows an untrusted header: X-Forwarded-* only from configured proxies, only
http/https, hosts pinned when configured, and `Cache-Control: no-store` on API answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from conftest import make_settings, running_server, simple_request, wait_ended
from msgbatch.api.app import MsgBatchServer
from msgbatch.api.forwarded import ProxyPolicy
from msgbatch.config import ConfigError

KEY = "sk-fwd"
AUTH = {"x-api-key": KEY}
B = "/v1/messages/batches"
PROXY = ("127.0.0.1", 40000)  # loopback: trusted by default
STRANGER = ("203.0.113.7", 40000)


@asynccontextmanager
async def client_from(srv: MsgBatchServer, peer: tuple[str, int]) -> AsyncIterator[httpx2.AsyncClient]:
    transport = httpx2.ASGITransport(app=srv.app, client=peer)
    async with httpx2.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def ended_batch(srv: MsgBatchServer) -> str:
    async with client_from(srv, PROXY) as http:
        batch_id: str = (await http.post(B, headers=AUTH, json={"requests": [simple_request("a")]})).json()["id"]
        while (await http.get(f"{B}/{batch_id}", headers=AUTH)).json()["processing_status"] != "ended":
            await asyncio.sleep(0.02)
    return batch_id


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    servers: list[Any] = []

    async def started(**settings: Any) -> MsgBatchServer:
        folder = tmp_path / str(len(servers))
        folder.mkdir()
        context = running_server(make_settings(folder, **settings))
        servers.append(context)
        return await context.__aenter__()

    try:
        yield started
    finally:
        for context in servers:
            await context.__aexit__(None, None, None)


FORWARDED = {"x-forwarded-proto": "https", "x-forwarded-host": "evil.example", "x-forwarded-prefix": "/steal"}


async def test_a_stranger_cannot_move_results_url(start: Callable[..., Any]) -> None:
    srv = await start()
    batch_id = await ended_batch(srv)
    async with client_from(srv, STRANGER) as http:
        got = (await http.get(f"{B}/{batch_id}", headers={**AUTH, **FORWARDED})).json()
        assert got["results_url"] == f"http://testserver{B}/{batch_id}/results"
        # Nor with a scheme that is not one: ignored from a stranger, not even an error.
        odd = await http.get(f"{B}/{batch_id}", headers={**AUTH, "x-forwarded-proto": "javascript"})
        assert odd.json()["results_url"].startswith("http://testserver/")
    async with client_from(srv, PROXY) as http:
        got = (await http.get(f"{B}/{batch_id}", headers={**AUTH, **FORWARDED})).json()
        assert got["results_url"] == f"https://evil.example/steal{B}/{batch_id}/results"


@pytest.mark.parametrize(
    ("header", "value", "message"),
    [
        ("x-forwarded-proto", "javascript", "X-Forwarded-Proto header must be http or https, not 'javascript'"),
        ("x-forwarded-proto", "https, data", "X-Forwarded-Proto header must be http or https, not 'data'"),
        ("x-forwarded-host", "evil.example/path", "X-Forwarded-Host header is not a valid host: 'evil.example/path'"),
        ("x-forwarded-host", "user@evil.example", "X-Forwarded-Host header is not a valid host: 'user@evil.example'"),
        ("x-forwarded-host", "a b", "X-Forwarded-Host header is not a valid host: 'a b'"),
        ("x-forwarded-prefix", "/a/../b", "X-Forwarded-Prefix header is not a plain path: '/a/../b'"),
        ("x-forwarded-prefix", "api", "X-Forwarded-Prefix header is not a plain path: 'api'"),
        ("x-forwarded-prefix", "//evil.example", "X-Forwarded-Prefix header is not a plain path: '//evil.example'"),
        ("host", "evil.example/x?", "Host header is not a valid host: 'evil.example/x?'"),
        ("host", "a\\b", "Host header is not a valid host: 'a\\\\b'"),
    ],
)
async def test_unusable_values_from_a_proxy_are_refused(
    start: Callable[..., Any], header: str, value: str, message: str
) -> None:
    srv = await start()
    async with client_from(srv, PROXY) as http:
        for path in (f"{B}?limit=1", "/openapi.json"):
            resp = await http.get(path, headers={**AUTH, header: value})
            assert resp.status_code == 400, resp.text
            body = resp.json()
            assert body["error"] == {"type": "invalid_request_error", "message": message}
            assert resp.headers["request-id"] == body["request_id"]


async def test_two_host_headers_are_refused(start: Callable[..., Any]) -> None:
    srv = await start()
    async with client_from(srv, STRANGER) as http:
        resp = await http.get(B, headers=[("x-api-key", KEY), ("host", "a.example"), ("host", "b.example")])
        assert resp.status_code == 400
        assert resp.json()["error"]["message"] == "The request has more than one Host header."


async def test_the_last_value_counts(start: Callable[..., Any]) -> None:
    # A proxy that appends: the client's own value comes first, the proxy's last.
    srv = await start()
    batch_id = await ended_batch(srv)
    async with client_from(srv, PROXY) as http:
        headers = {**AUTH, "x-forwarded-host": "evil.example, api.example.com", "x-forwarded-proto": "http, https"}
        got = (await http.get(f"{B}/{batch_id}", headers=headers)).json()
        assert got["results_url"] == f"https://api.example.com{B}/{batch_id}/results"


async def test_configured_proxies_only(start: Callable[..., Any]) -> None:
    srv = await start(forwarded_allow_ips=["10.0.0.0/8", "2001:db8::1"])
    batch_id = await ended_batch(srv)
    expected = {
        ("10.1.2.3", 1): "https://evil.example/steal",
        ("2001:db8::1", 1): "https://evil.example/steal",
        ("::ffff:10.9.9.9", 1): "https://evil.example/steal",  # IPv4 on a dual-stack socket
        ("127.0.0.1", 1): "http://testserver",  # loopback is no longer listed
        ("11.0.0.1", 1): "http://testserver",
        ("not-an-ip", 1): "http://testserver",
    }
    for peer, base in expected.items():
        async with client_from(srv, peer) as http:
            got = (await http.get(f"{B}/{batch_id}", headers={**AUTH, **FORWARDED})).json()
            assert got["results_url"] == f"{base}{B}/{batch_id}/results", peer


async def test_trust_everyone_when_asked(start: Callable[..., Any]) -> None:
    srv = await start(forwarded_allow_ips=["*"])
    batch_id = await ended_batch(srv)
    async with client_from(srv, STRANGER) as http:
        got = (await http.get(f"{B}/{batch_id}", headers={**AUTH, **FORWARDED})).json()
        assert got["results_url"].startswith("https://evil.example/steal/")


async def test_allowed_hosts(start: Callable[..., Any]) -> None:
    srv = await start(allowed_hosts=["api.example.com", "*.internal", "[::1]"])
    ok = [
        ({"host": "api.example.com"}, PROXY),
        ({"host": "API.example.com:8443"}, PROXY),
        ({"host": "batches.internal"}, PROXY),
        ({"host": "[::1]:8787"}, PROXY),
        ({"host": "edge:8080", "x-forwarded-host": "api.example.com"}, PROXY),  # the proxy's name counts
        ({"host": "api.example.com", "x-forwarded-host": "evil.example"}, STRANGER),  # ignored from a stranger
    ]
    refused = [
        ({"host": "evil.example"}, PROXY),
        ({"host": "internal"}, PROXY),  # *.internal is the subdomains only
        ({"host": "api.example.com.evil.example"}, PROXY),
        ({"host": "api.example.com", "x-forwarded-host": "evil.example"}, PROXY),
        ({"host": "127.0.0.1:8787"}, PROXY),
    ]
    for headers, peer in ok:
        async with client_from(srv, peer) as http:
            resp = await http.get(B, headers={**AUTH, **headers})
            assert resp.status_code == 200, (headers, resp.text)
    for headers, peer in refused:
        async with client_from(srv, peer) as http:
            for path in (B, "/openapi.json", "/", "/dashboard/app.js", "/nowhere"):
                resp = await http.get(path, headers={**AUTH, **headers})
                assert resp.status_code == 400, (headers, path)
                assert resp.json()["error"]["message"].endswith("is not one this server answers as.")
            # Probes are called by address and name no URL: they answer whatever the Host.
            for path in ("/health", "/ready", "/metrics"):
                assert (await http.get(path, headers=headers)).status_code == 200


async def test_public_url_wins_and_hosts_are_still_checked(start: Callable[..., Any]) -> None:
    srv = await start(public_url="https://batches.example.net/api/", allowed_hosts=["batches.example.net"])
    batch_id = await ended_batch_with_host(srv, "batches.example.net")
    async with client_from(srv, PROXY) as http:
        headers = {**AUTH, "host": "batches.example.net", "x-forwarded-proto": "http", "x-forwarded-prefix": "/x"}
        got = (await http.get(f"{B}/{batch_id}", headers=headers)).json()
        assert got["results_url"] == f"https://batches.example.net/api{B}/{batch_id}/results"
        assert (await http.get(B, headers={**AUTH, "host": "evil.example"})).status_code == 400


async def ended_batch_with_host(srv: MsgBatchServer, host: str) -> str:
    async with client_from(srv, PROXY) as http:
        headers = {**AUTH, "host": host}
        batch_id: str = (await http.post(B, headers=headers, json={"requests": [simple_request("a")]})).json()["id"]
        while (await http.get(f"{B}/{batch_id}", headers=headers)).json()["processing_status"] != "ended":
            await asyncio.sleep(0.02)
    return batch_id


async def test_the_sdk_is_not_sent_elsewhere(start: Callable[..., Any]) -> None:
    # A client whose traffic carries X-Forwarded-Host (its own, or injected on the way) through no
    # trusted proxy: its results come from this server, where its key was meant to go.
    srv = await start()
    seen: list[str] = []

    async def record(request: httpx2.Request) -> None:
        seen.append(request.url.host)

    http = httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=srv.app, client=STRANGER), event_hooks={"request": [record]}
    )
    client = anthropic.AsyncAnthropic(
        api_key=KEY,
        base_url="http://testserver",
        http_client=http,
        default_headers={"x-forwarded-host": "evil.example", "x-forwarded-proto": "https"},
        _strict_response_validation=True,
        max_retries=0,
    )
    async with client:
        batch = await client.messages.batches.create(requests=[simple_request("a")])  # type: ignore[misc]
        ended = await wait_ended(client, batch.id)
        assert ended.results_url == f"http://testserver{B}/{batch.id}/results"
        assert [r.custom_id async for r in await client.messages.batches.results(batch.id)] == ["a"]
    assert set(seen) == {"testserver"}


async def test_no_store_on_api_answers(start: Callable[..., Any]) -> None:
    srv = await start()
    batch_id = await ended_batch(srv)
    async with client_from(srv, PROXY) as http:
        for method, path in [
            ("GET", B),
            ("GET", f"{B}/{batch_id}"),
            ("GET", f"{B}/{batch_id}/results"),
            ("GET", f"{B}/{batch_id}/stats"),
            ("GET", f"{B}/msgbatch_nope"),
            ("POST", B),
            ("GET", "/health"),
            ("GET", "/metrics"),
            ("GET", "/openapi.json"),
        ]:
            resp = await http.request(method, path, headers=AUTH)
            assert resp.headers["cache-control"] == "no-store", (method, path)
        # The dashboard's own files say what they need (revalidate, never stale).
        assert (await http.get("/")).headers["cache-control"] == "no-cache"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"forwarded_allow_ips": ["10.0.0.300"]}, "forwarded_allow_ips: '10.0.0.300' is not an IP address or network"),
        ({"forwarded_allow_ips": ["proxy.local"]}, "forwarded_allow_ips: 'proxy.local' is not an IP address"),
        ({"allowed_hosts": ["api.example.com:443"]}, "allowed_hosts: 'api.example.com:443' is not a host name"),
        ({"allowed_hosts": ["https://api.example.com"]}, "allowed_hosts: 'https://api.example.com' is not a host"),
        ({"public_url": "ftp://x"}, "public_url: expected http(s)://host[:port][/prefix], got 'ftp://x'"),
    ],
)
def test_bad_settings_name_their_key(tmp_path: Path, settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ProxyPolicy.from_settings(make_settings(tmp_path, **settings))
    assert str(caught.value).startswith(message)
