"""The bytes of create bodies held at once are bounded: beyond the budget a create waits, then 429."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from pathlib import Path

import anthropic
import httpx2
import msgspec
import pytest

from conftest import make_settings, raw_client, running_server, simple_request
from msgbatch.api.body import CreateBudget
from msgbatch.errors import RateLimitError

KEY = "sk-b"
AUTH = {"x-api-key": KEY}
B = "/v1/messages/batches"
KIB = 1024


# -- the budget itself -----------------------------------------------------------------------


async def test_first_come_first_served_and_a_timeout() -> None:
    budget = CreateBudget(100, wait=0.2)
    assert await budget.acquire(60) == 60
    big = asyncio.create_task(budget.acquire(50))  # does not fit: waits
    await asyncio.sleep(0.01)
    small = asyncio.create_task(budget.acquire(10))  # would fit, but waits behind the big one
    await asyncio.sleep(0.01)
    assert not big.done() and not small.done()
    budget.release(60)
    assert await big == 50 and await small == 10
    assert budget.used == 60
    with pytest.raises(RateLimitError) as caught:
        await budget.acquire(50)
    assert caught.value.status == 429 and caught.value.headers == {"retry-after": "1"}
    assert budget.used == 60 and not budget._waiters


async def test_more_than_the_whole_budget_goes_alone() -> None:
    budget = CreateBudget(100, wait=1)
    assert await budget.acquire(500) == 100
    waiting = asyncio.create_task(budget.acquire(1))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    budget.release(100)
    assert await waiting == 1


async def test_a_cancelled_waiter_leaves_nothing_behind() -> None:
    budget = CreateBudget(100, wait=5)
    await budget.acquire(100)
    waiting = asyncio.create_task(budget.acquire(50))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    budget.release(100)
    assert budget.used == 0 and not budget._waiters
    assert await budget.acquire(100) == 100


# -- through the API -------------------------------------------------------------------------


def body_of(n: int) -> bytes:
    return msgspec.json.encode({"requests": [simple_request(f"r{i}", "x" * 400) for i in range(n)]})


class HeldBody:
    """A create body that stops after its first bytes until released: it holds its reservation."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.go = asyncio.Event()
        self.started = asyncio.Event()

    async def stream(self) -> AsyncIterator[bytes]:
        yield self.body[:10]
        self.started.set()
        await self.go.wait()
        yield self.body[10:]


async def stored(http: httpx2.AsyncClient) -> int:
    return len((await http.get(B, headers=AUTH, params={"limit": 1000})).json()["data"])


async def test_beyond_the_budget_a_create_waits_then_gets_429(tmp_path: Path) -> None:
    body = body_of(400)  # ~200 kB
    settings = make_settings(
        tmp_path, workspaces={"b": [KEY]}, create_memory_bytes=len(body) + 1000, create_memory_wait=0.3
    )
    async with running_server(settings) as srv, raw_client(srv) as http:
        held = HeldBody(body)
        first = asyncio.create_task(
            http.post(B, headers={**AUTH, "content-length": str(len(body))}, content=held.stream())
        )
        await held.started.wait()
        # Declared or not (chunked, compressed), a second body finds no room, waits 0.3 s, and is refused.
        for headers, content in [
            ({}, body),
            ({"content-encoding": "gzip"}, gzip.compress(body)),
        ]:
            resp = await http.post(B, headers={**AUTH, **headers}, content=content)
            assert resp.status_code == 429, resp.text
            assert resp.json()["error"]["type"] == "rate_limit_error"
            assert resp.headers["retry-after"] == "1"
            assert resp.headers["request-id"] == resp.json()["request_id"]
        held.go.set()
        assert (await first).status_code == 200
        assert await stored(http) == 1
        # Room again.
        assert (await http.post(B, headers=AUTH, content=body)).status_code == 200
        assert await stored(http) == 2


async def test_a_create_that_waits_goes_when_room_is_made(tmp_path: Path) -> None:
    body = body_of(200)
    settings = make_settings(
        tmp_path, workspaces={"b": [KEY]}, create_memory_bytes=len(body) + 1000, create_memory_wait=30
    )
    async with running_server(settings) as srv, raw_client(srv) as http:
        held = HeldBody(body)
        first = asyncio.create_task(
            http.post(B, headers={**AUTH, "content-length": str(len(body))}, content=held.stream())
        )
        await held.started.wait()
        second = asyncio.create_task(http.post(B, headers=AUTH, content=body))
        await asyncio.sleep(0.2)
        assert not second.done()
        held.go.set()
        assert (await first).status_code == 200
        assert (await second).status_code == 200
        assert srv.app.state.create_budget.used == 0


async def test_the_sdk_sees_a_rate_limit_error(tmp_path: Path) -> None:
    body = body_of(100)
    settings = make_settings(tmp_path, workspaces={"b": [KEY]}, create_memory_bytes=len(body), create_memory_wait=0.1)
    async with running_server(settings) as srv, raw_client(srv) as http:
        held = HeldBody(body)
        first = asyncio.create_task(
            http.post(B, headers={**AUTH, "content-length": str(len(body))}, content=held.stream())
        )
        await held.started.wait()
        client = anthropic.AsyncAnthropic(
            api_key=KEY,
            base_url="http://testserver",
            http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=srv.app)),
            _strict_response_validation=True,
            max_retries=0,
        )
        async with client:
            with pytest.raises(anthropic.RateLimitError):
                await client.messages.batches.create(requests=[simple_request("a")])  # type: ignore[misc]
        held.go.set()
        await first
