"""The wire contract (WIRE.md) through the official SDK, standard and beta, plus raw HTTP where
the SDK hides what is on the wire (headers, URLs, exact JSON)."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anthropic
import httpx2
import pytest
from anthropic.types.beta.messages import BetaMessageBatchIndividualResponse
from anthropic.types.messages import MessageBatchIndividualResponse

from conftest import (
    TEST_KEY,
    async_client_for,
    gated_simulator,
    make_settings,
    raw_client,
    running_server,
    simple_request,
    wait_ended,
    wait_until,
)
from msgbatch.api.app import MsgBatchServer
from msgbatch.backends.mock import MockBackend
from msgbatch.backends.router import Router

AUTH = {"x-api-key": TEST_KEY}
BATCH_KEYS = {
    "id",
    "type",
    "processing_status",
    "request_counts",
    "created_at",
    "expires_at",
    "ended_at",
    "cancel_initiated_at",
    "archived_at",
    "results_url",
}
COUNT_KEYS = {"processing", "succeeded", "errored", "canceled", "expired"}
RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
BATCH_ID = re.compile(r"^msgbatch_[0-9A-Za-z]{24}$")
REQUEST_ID = re.compile(r"^req_[0-9A-Za-z]+$")
IN_PROGRESS_DELETE = "In progress batches cannot be deleted. Consider canceling the batch instead."
BETA = "message-batches-2024-09-24"


# -- standard and beta: the same calls through either resource --------------------------------


class Flavor:
    """`client.messages.batches` or `client.beta.messages.batches` (with `betas=[...]`)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.beta = name == "beta"
        self.kw: dict[str, Any] = {"betas": [BETA]} if self.beta else {}
        self.line_type: Any = BetaMessageBatchIndividualResponse if self.beta else MessageBatchIndividualResponse

    def api(self, client: Any) -> Any:
        return client.beta.messages.batches if self.beta else client.messages.batches

    async def create(self, client: Any, requests: list[dict[str, Any]]) -> Any:
        return await self.api(client).create(requests=requests, **self.kw)

    async def retrieve(self, client: Any, batch_id: str) -> Any:
        return await self.api(client).retrieve(batch_id, **self.kw)

    def list(self, client: Any, **params: Any) -> Any:
        return self.api(client).list(**params, **self.kw)

    async def cancel(self, client: Any, batch_id: str) -> Any:
        return await self.api(client).cancel(batch_id, **self.kw)

    async def delete(self, client: Any, batch_id: str) -> Any:
        return await self.api(client).delete(batch_id, **self.kw)

    async def results(self, client: Any, batch_id: str) -> list[Any]:
        return [r async for r in await self.api(client).results(batch_id, **self.kw)]

    async def wait_ended(self, client: Any, batch_id: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            batch = await self.retrieve(client, batch_id)
            if batch.processing_status == "ended":
                return batch
            assert time.monotonic() < deadline, f"batch did not end: {batch}"
            await asyncio.sleep(0.02)


@pytest.fixture(params=["standard", "beta"])
def flavor(request: pytest.FixtureRequest) -> Flavor:
    return Flavor(request.param)


class Gated:
    """A server whose backend holds every request until the test releases a permit."""

    def __init__(self, server: MsgBatchServer, backend: MockBackend, gate: asyncio.Semaphore) -> None:
        self.server = server
        self.backend = backend
        self.gate = gate
        self.client = async_client_for(server)

    def release(self, n: int = 1) -> None:
        for _ in range(n):
            self.gate.release()


@pytest.fixture
async def gated_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    stack: list[tuple[Gated, Any]] = []

    async def make(**overrides: Any) -> Gated:
        gate = asyncio.Semaphore(0)
        backend = gated_simulator(gate)
        sub = tmp_path / f"gated{len(stack)}"
        sub.mkdir()
        cm = running_server(make_settings(sub, **overrides), router=Router([], backend))
        server = await cm.__aenter__()
        gated = Gated(server, backend, gate)
        stack.append((gated, cm))
        return gated

    try:
        yield make
    finally:
        for gated, cm in reversed(stack):
            gated.release(100_000)  # nothing may stay blocked: stop() waits for running requests
            await gated.client.close()
            await cm.__aexit__(None, None, None)


def counts_of(batch: Any) -> dict[str, int]:
    c = batch.request_counts
    return {k: getattr(c, k) for k in COUNT_KEYS}


def assert_counts(batch: Any, total: int, **expected: int) -> None:
    counts = counts_of(batch)
    assert sum(counts.values()) == total, counts
    for key in COUNT_KEYS:
        assert counts[key] == expected.get(key, 0), (key, counts)


# -- create / retrieve -------------------------------------------------------------------------


async def test_create_response_shape(aclient: anthropic.AsyncAnthropic, flavor: Flavor) -> None:
    batch = await flavor.create(aclient, [simple_request(f"r{i}") for i in range(3)])
    assert BATCH_ID.match(batch.id), batch.id
    assert batch.type == "message_batch"
    assert batch.processing_status == "in_progress"
    assert_counts(batch, 3, processing=3)
    assert batch.expires_at - batch.created_at == timedelta(hours=24)
    assert batch.created_at.utcoffset() == timedelta(0)
    assert batch.results_url is None
    assert batch.ended_at is None
    assert batch.cancel_initiated_at is None
    assert batch.archived_at is None


async def test_create_raw_json_has_every_key(server: MsgBatchServer) -> None:
    async with raw_client(server) as http:
        resp = await http.post("/v1/messages/batches", headers=AUTH, json={"requests": [simple_request("a")]})
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("application/json")
        body = resp.json()
        assert set(body) == BATCH_KEYS
        assert set(body["request_counts"]) == COUNT_KEYS
        assert body["request_counts"] == {"processing": 1, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        assert body["type"] == "message_batch"
        assert body["processing_status"] == "in_progress"
        for key in ("ended_at", "cancel_initiated_at", "archived_at", "results_url"):
            assert key in body and body[key] is None
        assert RFC3339_Z.match(body["created_at"]) and RFC3339_Z.match(body["expires_at"])

        got = (await http.get(f"/v1/messages/batches/{body['id']}", headers=AUTH)).json()
        assert set(got) == BATCH_KEYS
        assert got["id"] == body["id"] and got["created_at"] == body["created_at"]
        while got["processing_status"] != "ended":
            await asyncio.sleep(0.02)
            got = (await http.get(f"/v1/messages/batches/{body['id']}", headers=AUTH)).json()
        # msgbatch's one key of its own on a batch that uses no option: its tokens, once it has some.
        assert set(got) == BATCH_KEYS | {"usage"}
        assert RFC3339_Z.match(got["ended_at"])
        assert got["cancel_initiated_at"] is None and got["archived_at"] is None
        assert got["results_url"] == f"http://testserver/v1/messages/batches/{body['id']}/results"


async def test_retrieve_until_ended(aclient: anthropic.AsyncAnthropic, flavor: Flavor) -> None:
    created = await flavor.create(aclient, [simple_request(f"r{i}") for i in range(4)])
    got = await flavor.retrieve(aclient, created.id)
    assert got.id == created.id and got.created_at == created.created_at and got.expires_at == created.expires_at
    ended = await flavor.wait_ended(aclient, created.id)
    assert_counts(ended, 4, succeeded=4)
    assert ended.ended_at is not None and ended.ended_at >= ended.created_at
    assert ended.results_url == f"http://testserver/v1/messages/batches/{created.id}/results"
    assert ended.cancel_initiated_at is None


# -- list --------------------------------------------------------------------------------------


async def _make_batches(client: anthropic.AsyncAnthropic, n: int) -> list[str]:
    """n batches, oldest first."""
    ids = []
    for i in range(n):
        ids.append((await client.messages.batches.create(requests=[simple_request(f"b{i}")])).id)
    return ids


async def test_list_pages_and_cursors(aclient: anthropic.AsyncAnthropic, flavor: Flavor) -> None:
    ids = await _make_batches(aclient, 25)
    newest_first = ids[::-1]

    page = await flavor.list(aclient, limit=10)
    assert [b.id for b in page.data] == newest_first[:10]
    assert page.has_more is True
    assert page.first_id == newest_first[0] and page.last_id == newest_first[9]

    page2 = await flavor.list(aclient, limit=10, after_id=page.last_id)
    assert [b.id for b in page2.data] == newest_first[10:20]
    assert page2.has_more is True
    page3 = await flavor.list(aclient, limit=10, after_id=page2.last_id)
    assert [b.id for b in page3.data] == newest_first[20:]
    assert page3.has_more is False
    assert page3.first_id == newest_first[20] and page3.last_id == ids[0]

    # before_id: the `limit` batches just newer than X, the nearest ones, still newest first.
    before = await flavor.list(aclient, limit=10, before_id=ids[0])
    assert [b.id for b in before.data] == ids[1:11][::-1]
    assert before.has_more is True
    assert before.first_id == ids[10] and before.last_id == ids[1]
    before_top = await flavor.list(aclient, limit=10, before_id=ids[20])
    assert [b.id for b in before_top.data] == ids[21:][::-1]
    assert before_top.has_more is False
    exactly = await flavor.list(aclient, limit=10, before_id=ids[14])  # exactly 10 newer ones
    assert [b.id for b in exactly.data] == ids[15:][::-1] and exactly.has_more is False
    exactly = await flavor.list(aclient, limit=10, after_id=ids[10])  # exactly 10 older ones
    assert [b.id for b in exactly.data] == ids[:10][::-1] and exactly.has_more is False

    # Nothing beyond either end.
    for params in ({"after_id": ids[0]}, {"before_id": ids[-1]}):
        empty = await flavor.list(aclient, limit=10, **params)
        assert empty.data == [] and empty.has_more is False
        assert empty.first_id is None and empty.last_id is None

    # The limit's bounds are inclusive; the default is 20.
    assert [b.id for b in (await flavor.list(aclient, limit=1)).data] == newest_first[:1]
    assert [b.id for b in (await flavor.list(aclient, limit=1000)).data] == newest_first
    default = await flavor.list(aclient)
    assert [b.id for b in default.data] == newest_first[:20] and default.has_more is True
    exact = await flavor.list(aclient, limit=25)
    assert [b.id for b in exact.data] == newest_first and exact.has_more is False


async def test_list_auto_pagination_both_directions(aclient: anthropic.AsyncAnthropic, flavor: Flavor) -> None:
    ids = await _make_batches(aclient, 25)

    seen = [b.id async for b in flavor.list(aclient, limit=10)]
    assert seen == ids[::-1]

    # With before_id the SDK follows first_id: pages of 10 going newer, each newest first.
    pages = []
    page = await flavor.list(aclient, limit=10, before_id=ids[0])
    while True:
        pages.append([b.id for b in page.data])
        if not page.has_next_page():
            break
        page = await page.get_next_page()
    assert pages == [ids[1:11][::-1], ids[11:21][::-1], ids[21:][::-1]]
    walked = [b.id async for b in flavor.list(aclient, limit=10, before_id=ids[0])]
    assert walked == [i for p in pages for i in p]
    assert sorted(walked) == sorted(ids[1:])


async def test_list_same_millisecond_keeps_creation_order(
    aclient: anthropic.AsyncAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Freeze the id clock: every batch below is created "in the same millisecond" (and one
    # millisecond earlier than batches already made, as when the clock steps back).
    import msgbatch.ids

    frozen = time.time()
    monkeypatch.setattr(msgbatch.ids, "time", SimpleNamespace(time=lambda: frozen))
    ids = await _make_batches(aclient, 12)
    frozen -= 0.001
    ids += await _make_batches(aclient, 3)
    assert len(set(ids)) == 15
    listed = [b.id async for b in aclient.messages.batches.list(limit=4)]
    assert listed == ids[::-1]
    # Cursors work in the middle of such a run too.
    after = await aclient.messages.batches.list(limit=3, after_id=ids[7])
    assert [b.id for b in after.data] == ids[4:7][::-1]
    before = await aclient.messages.batches.list(limit=3, before_id=ids[7])
    assert [b.id for b in before.data] == ids[8:11][::-1]


async def test_concurrent_creates_list_in_creation_order(aclient: anthropic.AsyncAnthropic) -> None:
    created = await asyncio.gather(
        *(aclient.messages.batches.create(requests=[simple_request(f"c{i}")]) for i in range(20))
    )
    by_time = sorted(created, key=lambda b: (b.created_at, b.id))
    listed = [b.id async for b in aclient.messages.batches.list(limit=7)]
    assert sorted(listed) == sorted(b.id for b in created)
    assert listed == sorted(listed, reverse=True)  # ids are the order
    assert [b.id for b in by_time][::-1] == listed


# -- cancel ------------------------------------------------------------------------------------


async def test_cancel_running_and_pending(gated_factory: Callable[..., Any], flavor: Flavor) -> None:
    g: Gated = await gated_factory(concurrency=2)
    batch = await flavor.create(g.client, [simple_request(f"r{i}", f"r{i}") for i in range(10)])
    await wait_until(lambda: len(g.backend.calls) == 2, what="two requests running")

    canceling = await flavor.cancel(g.client, batch.id)
    assert canceling.processing_status == "canceling"
    assert canceling.cancel_initiated_at is not None
    assert canceling.ended_at is None and canceling.results_url is None
    assert_counts(canceling, 10, processing=2, canceled=8)

    async with raw_client(g.server) as http:
        resp = await http.get(f"/v1/messages/batches/{batch.id}/results", headers=AUTH)
        assert resp.status_code == 404
        assert resp.json()["error"]["message"] == "Message Batch ID has no available results."

    again = await flavor.cancel(g.client, batch.id)
    assert again.processing_status == "canceling"
    assert again.cancel_initiated_at == canceling.cancel_initiated_at
    assert counts_of(again) == counts_of(canceling)

    g.release(2)
    ended = await flavor.wait_ended(g.client, batch.id)
    assert_counts(ended, 10, succeeded=2, canceled=8)
    assert ended.cancel_initiated_at == canceling.cancel_initiated_at
    assert ended.ended_at is not None and ended.ended_at >= ended.cancel_initiated_at
    assert len(g.backend.calls) == 2  # nothing was started after the cancel

    results = await flavor.results(g.client, batch.id)
    kinds = {r.custom_id: r.result.type for r in results}
    assert len(results) == 10 and len(kinds) == 10
    assert list(kinds.values()).count("succeeded") == 2
    assert list(kinds.values()).count("canceled") == 8
    # The ones that succeeded are exactly the ones that were running.
    ran = {params["messages"][0]["content"] for params, _ in g.backend.calls}
    assert {cid for cid, kind in kinds.items() if kind == "succeeded"} == ran

    with pytest.raises(anthropic.BadRequestError) as exc:
        await flavor.cancel(g.client, batch.id)
    assert exc.value.type == "invalid_request_error"


async def test_cancel_with_nothing_running_ends_at_once(gated_factory: Callable[..., Any]) -> None:
    g: Gated = await gated_factory(concurrency=1)
    blocker = await g.client.messages.batches.create(requests=[simple_request("block")])
    await wait_until(lambda: len(g.backend.calls) == 1, what="the blocker running")
    idle = await g.client.messages.batches.create(requests=[simple_request(f"i{i}") for i in range(5)])
    await asyncio.sleep(0.1)
    canceled = await g.client.messages.batches.cancel(idle.id)
    assert canceled.processing_status == "ended"
    assert_counts(canceled, 5, canceled=5)
    assert canceled.ended_at is not None and canceled.cancel_initiated_at is not None
    assert canceled.results_url is not None
    results = [r async for r in await g.client.messages.batches.results(idle.id)]
    assert sorted(r.custom_id for r in results) == [f"i{i}" for i in range(5)]
    assert {r.result.type for r in results} == {"canceled"}
    g.release(1)
    assert_counts(await wait_ended(g.client, blocker.id), 1, succeeded=1)


async def test_cancel_ended_batch_is_400(aclient: anthropic.AsyncAnthropic, flavor: Flavor) -> None:
    batch = await flavor.create(aclient, [simple_request("a")])
    await flavor.wait_ended(aclient, batch.id)
    with pytest.raises(anthropic.BadRequestError) as exc:
        await flavor.cancel(aclient, batch.id)
    assert exc.value.status_code == 400
    assert exc.value.type == "invalid_request_error"
    after = await flavor.retrieve(aclient, batch.id)
    assert after.processing_status == "ended" and after.cancel_initiated_at is None
    assert_counts(after, 1, succeeded=1)


# -- delete ------------------------------------------------------------------------------------


async def test_delete_ended_batch(aclient: anthropic.AsyncAnthropic, server: MsgBatchServer, flavor: Flavor) -> None:
    keep = await flavor.create(aclient, [simple_request("keep")])
    batch = await flavor.create(aclient, [simple_request("a"), simple_request("b")])
    await flavor.wait_ended(aclient, batch.id)
    await flavor.wait_ended(aclient, keep.id)

    deleted = await flavor.delete(aclient, batch.id)
    assert deleted.id == batch.id and deleted.type == "message_batch_deleted"

    for call in (flavor.retrieve, flavor.cancel, flavor.delete, flavor.results):
        with pytest.raises(anthropic.NotFoundError) as exc:
            await call(aclient, batch.id)
        assert exc.value.type == "not_found_error"
        assert exc.value.api_message == "Message Batch ID not found."
    async with raw_client(server) as http:
        resp = await http.get(f"/v1/messages/batches/{batch.id}/results", headers=AUTH)
        assert resp.status_code == 404
        assert resp.json()["error"] == {"type": "not_found_error", "message": "Message Batch ID not found."}
    assert [b.id async for b in flavor.list(aclient)] == [keep.id]


async def test_delete_in_progress_or_canceling_is_400(gated_factory: Callable[..., Any], flavor: Flavor) -> None:
    g: Gated = await gated_factory(concurrency=1)
    batch = await flavor.create(g.client, [simple_request(f"r{i}") for i in range(3)])
    await wait_until(lambda: len(g.backend.calls) == 1, what="a request running")
    with pytest.raises(anthropic.BadRequestError) as exc:
        await flavor.delete(g.client, batch.id)
    assert exc.value.type == "invalid_request_error"
    assert exc.value.api_message == IN_PROGRESS_DELETE

    assert (await flavor.cancel(g.client, batch.id)).processing_status == "canceling"
    with pytest.raises(anthropic.BadRequestError) as exc:
        await flavor.delete(g.client, batch.id)
    assert exc.value.api_message == IN_PROGRESS_DELETE
    assert (await flavor.retrieve(g.client, batch.id)).processing_status == "canceling"

    g.release(1)
    await flavor.wait_ended(g.client, batch.id)
    assert (await flavor.delete(g.client, batch.id)).type == "message_batch_deleted"


# -- results -----------------------------------------------------------------------------------


async def raw_results(http: httpx2.AsyncClient, batch_id: str, **params: str) -> list[dict[str, Any]]:
    resp = await http.get(f"/v1/messages/batches/{batch_id}/results", headers=AUTH, params=params)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/x-jsonl")
    assert "request-id" in resp.headers
    body = resp.content
    assert body.endswith(b"\n") and not body.startswith(b"\n")
    assert b"\n\n" not in body and b"\r" not in body
    return [json.loads(line) for line in body.split(b"\n")[:-1]]


async def test_results_every_custom_id_once(
    aclient: anthropic.AsyncAnthropic, server: MsgBatchServer, flavor: Flavor
) -> None:
    n = 2_345  # more than one page of the results stream
    ids = [f"req-{i}" for i in range(n)]
    batch = await flavor.create(aclient, [simple_request(cid, f"Question {cid}") for cid in ids])
    ended = await flavor.wait_ended(aclient, batch.id)
    assert_counts(ended, n, succeeded=n)

    results = await flavor.results(aclient, batch.id)
    assert sorted(r.custom_id for r in results) == sorted(ids)
    async with raw_client(server) as http:
        lines = await raw_results(http, batch.id)
    assert sorted(line["custom_id"] for line in lines) == sorted(ids)
    for line in lines:
        parsed = flavor.line_type.model_validate(line)
        assert parsed.result.type == "succeeded"
        message = parsed.result.message
        assert message.id.startswith("msg_") and message.role == "assistant"
        assert message.usage.service_tier == "batch"
        assert f'"Question {line["custom_id"]}"' in message.content[0].text


async def test_results_lines_validate_for_every_kind(aclient: anthropic.AsyncAnthropic, server: MsgBatchServer) -> None:
    weather = {
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
            "required": ["city"],
        },
    }
    requests = [
        simple_request("plain"),
        simple_request("thinking", "Think hard", thinking={"type": "enabled", "budget_tokens": 40}),
        simple_request(
            "tool", "Weather in Paris?", tools=[weather], tool_choice={"type": "tool", "name": "get_weather"}
        ),
        simple_request("stop", "What is the capital of France?", stop_sequences=["capital"]),
        simple_request("short", "Tell me a long story please", max_tokens=2),
        simple_request("system", "Hi", system=[{"type": "text", "text": "You are terse and exact."}]),
        simple_request("overloaded", "x [[simulate error=overloaded_error]]"),
        simple_request("streamed", stream=True),
        simple_request("unicode", 'Ça va? 日本語 "quoted" \\ back\nslash'),
    ]
    batch = await aclient.messages.batches.create(requests=requests)
    ended = await wait_ended(aclient, batch.id)
    assert_counts(ended, 9, succeeded=7, errored=2)
    async with raw_client(server) as http:
        lines = await raw_results(http, batch.id)
    parsed = {r.custom_id: r.result for r in (MessageBatchIndividualResponse.model_validate(line) for line in lines)}
    assert len(parsed) == len(lines) == 9
    beta_parsed = [BetaMessageBatchIndividualResponse.model_validate(line) for line in lines]
    assert len(beta_parsed) == 9
    assert parsed["unicode"].message.content[0].text.startswith('Regarding "Ça va? 日本語 "quoted" \\ back')

    assert parsed["plain"].message.stop_reason == "end_turn"
    thinking = parsed["thinking"].message.content
    assert thinking[0].type == "thinking" and thinking[0].thinking and thinking[0].signature
    tool = parsed["tool"].message
    assert tool.stop_reason == "tool_use"
    use = next(b for b in tool.content if b.type == "tool_use")
    assert use.name == "get_weather" and isinstance(use.input, dict) and "city" in use.input
    assert use.id
    assert parsed["stop"].message.stop_reason == "stop_sequence"
    assert parsed["stop"].message.stop_sequence == "capital"
    assert parsed["short"].message.stop_reason == "max_tokens"
    assert parsed["short"].message.usage.output_tokens <= 2
    assert parsed["overloaded"].type == "errored"
    assert parsed["overloaded"].error.type == "error"
    assert parsed["overloaded"].error.error.type == "overloaded_error"
    assert parsed["streamed"].error.error.type == "invalid_request_error"
    assert parsed["streamed"].error.error.message == '"stream=True" is not supported in the Message Batches API'
    for result in parsed.values():
        if result.type == "succeeded":
            usage = result.message.usage
            assert isinstance(usage.input_tokens, int) and isinstance(usage.output_tokens, int)
            assert usage.cache_creation_input_tokens == 0 and usage.cache_read_input_tokens == 0


async def test_results_before_end_are_404(gated_factory: Callable[..., Any], flavor: Flavor) -> None:
    g: Gated = await gated_factory(concurrency=1)
    batch = await flavor.create(g.client, [simple_request("a"), simple_request("b")])
    async with raw_client(g.server) as http:
        for suffix in ("", "?beta=true"):
            resp = await http.get(f"/v1/messages/batches/{batch.id}/results{suffix}", headers=AUTH)
            assert resp.status_code == 404
            assert resp.json()["error"] == {
                "type": "not_found_error",
                "message": "Message Batch ID has no available results.",
            }
            assert resp.headers["request-id"] == resp.json()["request_id"]
    # The SDK refuses on its own: the batch has no results_url yet.
    with pytest.raises(anthropic.AnthropicError):
        await flavor.results(g.client, batch.id)
    g.release(2)
    await flavor.wait_ended(g.client, batch.id)
    assert len(await flavor.results(g.client, batch.id)) == 2


# -- counts ------------------------------------------------------------------------------------


async def test_counts_are_live_and_always_sum_to_total(gated_factory: Callable[..., Any], flavor: Flavor) -> None:
    g: Gated = await gated_factory(concurrency=2)
    total = 6
    batch = await flavor.create(
        g.client,
        [simple_request(f"ok{i}") for i in range(4)]
        + [simple_request(f"bad{i}", f"x [[simulate error=api_error]] {i}") for i in range(2)],
    )
    snapshots: list[dict[str, int]] = []

    async def snap() -> Any:
        b = await flavor.retrieve(g.client, batch.id)
        counts = counts_of(b)
        assert sum(counts.values()) == total, counts
        snapshots.append(counts)
        return b

    await wait_until(lambda: len(g.backend.calls) == 2, what="two running")
    b = await snap()
    assert_counts(b, total, processing=6)
    g.release(2)

    async def two_done() -> bool:
        b = await snap()
        return b.request_counts.succeeded == 2

    await wait_until(two_done, what="two succeeded")
    live = await snap()
    assert live.processing_status == "in_progress"
    assert_counts(live, total, processing=4, succeeded=2)  # live: not held back until the end

    g.release(4)  # ok2, ok3 and the two that fail (the gate comes before the answer)

    async def ended() -> bool:
        return (await snap()).processing_status == "ended"

    await wait_until(ended, what="batch end")
    assert snapshots[-1] == {"processing": 0, "succeeded": 4, "errored": 2, "canceled": 0, "expired": 0}
    for before, after in itertools.pairwise(snapshots):
        assert after["processing"] <= before["processing"]
        for key in ("succeeded", "errored", "canceled", "expired"):
            assert after[key] >= before[key], (before, after)


# -- results_url -------------------------------------------------------------------------------


async def _ended_batch(http: httpx2.AsyncClient) -> str:
    resp = await http.post("/v1/messages/batches", headers=AUTH, json={"requests": [simple_request("a")]})
    batch_id: str = resp.json()["id"]
    while (await http.get(f"/v1/messages/batches/{batch_id}", headers=AUTH)).json()["processing_status"] != "ended":
        await asyncio.sleep(0.02)
    return batch_id


@pytest.mark.parametrize(
    ("headers", "base"),
    [
        ({}, "http://testserver"),
        ({"host": "batches.internal:8787"}, "http://batches.internal:8787"),
        ({"x-forwarded-proto": "https"}, "https://testserver"),
        ({"x-forwarded-proto": "https", "x-forwarded-host": "api.example.com"}, "https://api.example.com"),
        ({"host": "10.0.0.5:8787", "x-forwarded-host": "api.example.com:8443"}, "http://api.example.com:8443"),
        # Of several values the last counts: the one the nearest (trusted) proxy added; the first
        # may be whatever the client sent (tests/integration/test_forwarded.py).
        ({"x-forwarded-proto": "https, http", "x-forwarded-host": "edge.example, inner:8787"}, "http://inner:8787"),
    ],
    ids=["default", "host", "proto", "proto+host", "forwarded-host-wins", "proxy-chain-last-value"],
)
async def test_results_url_follows_the_request(server: MsgBatchServer, headers: dict[str, str], base: str) -> None:
    async with raw_client(server) as http:
        batch_id = await _ended_batch(http)
        expected = f"{base}/v1/messages/batches/{batch_id}/results"
        got = (await http.get(f"/v1/messages/batches/{batch_id}", headers={**AUTH, **headers})).json()
        assert got["results_url"] == expected
        listed = (await http.get("/v1/messages/batches", headers={**AUTH, **headers})).json()
        assert listed["data"][0]["results_url"] == expected
        # The URL's path is served here.
        path = expected.split(base, 1)[1]
        assert (await http.get(path, headers=AUTH)).status_code == 200


async def test_results_url_uses_configured_public_url(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, public_url="https://batches.example.net/api/")
    async with running_server(settings) as srv, raw_client(srv) as http:
        batch_id = await _ended_batch(http)
        got = (
            await http.get(
                f"/v1/messages/batches/{batch_id}",
                headers={**AUTH, "host": "elsewhere:1", "x-forwarded-host": "proxy.example.org"},
            )
        ).json()
        assert got["results_url"] == f"https://batches.example.net/api/v1/messages/batches/{batch_id}/results"


async def test_sdk_fetches_results_from_absolute_url(tmp_path: Path) -> None:
    # The server names a public address other than the client's base_url: the SDK must fetch the
    # results from results_url as it is (the ASGI transport routes any host to the app).
    seen: list[str] = []

    async def record(request: httpx2.Request) -> None:
        seen.append(str(request.url))

    settings = make_settings(tmp_path, public_url="http://public.example:9000")
    async with running_server(settings) as srv:
        http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=srv.app), event_hooks={"request": [record]})
        client = anthropic.AsyncAnthropic(
            api_key=TEST_KEY,
            base_url="http://testserver",
            http_client=http,
            max_retries=0,
            _strict_response_validation=True,
        )
        async with client:
            batch = await client.messages.batches.create(requests=[simple_request("a")])
            ended = await wait_ended(client, batch.id)
            assert ended.results_url == f"http://public.example:9000/v1/messages/batches/{batch.id}/results"
            results = [r async for r in await client.messages.batches.results(batch.id)]
            assert [r.custom_id for r in results] == ["a"]
    assert seen[0].startswith("http://testserver/v1/messages/batches")
    assert seen[-1] == ended.results_url


# -- anthropic-beta reaches the backend --------------------------------------------------------


async def test_betas_reach_the_backend(tmp_path: Path) -> None:
    backend = gated_simulator()
    async with running_server(make_settings(tmp_path), router=Router([], backend)) as srv:
        client = async_client_for(srv)
        async with client, raw_client(srv) as http:
            beta = await client.beta.messages.batches.create(
                requests=[simple_request("b1", "b1"), simple_request("b2", "b2")],
                betas=["interleaved-thinking-2025-05-14", "context-1m-2025-08-07"],
            )
            std = await client.messages.batches.create(
                requests=[simple_request("s1", "s1")], extra_headers={"anthropic-beta": "files-api-2025-04-14"}
            )
            none = await client.messages.batches.create(requests=[simple_request("n1", "n1")])
            resp = await http.post(
                "/v1/messages/batches?beta=true",
                headers=[
                    ("x-api-key", TEST_KEY),
                    ("anthropic-beta", "alpha-1, beta-2"),
                    ("anthropic-beta", "gamma-3"),
                ],
                json={"requests": [simple_request("r1", "r1"), simple_request("r2", "r2")]},
            )
            assert resp.status_code == 200
            for batch_id in (beta.id, std.id, none.id, resp.json()["id"]):
                await wait_ended(client, batch_id)

    seen = {params["messages"][0]["content"]: list(context.betas) for params, context in backend.calls}
    assert len(backend.calls) == len(seen) == 6
    both = ["interleaved-thinking-2025-05-14", "context-1m-2025-08-07"]
    repeated = ["alpha-1", "beta-2", "gamma-3"]
    assert seen == {
        "b1": both,
        "b2": both,
        "s1": ["files-api-2025-04-14"],
        "n1": [],
        "r1": repeated,
        "r2": repeated,
    }


# -- the beta twin, auth forms, versions, request ids ------------------------------------------


async def test_beta_query_flag_is_accepted_on_every_route(server: MsgBatchServer) -> None:
    async with raw_client(server) as http:
        plain = await http.post("/v1/messages/batches", headers=AUTH, json={"requests": [simple_request("p")]})
        made = await http.post(
            "/v1/messages/batches?beta=true",
            headers={**AUTH, "anthropic-beta": BETA},
            json={"requests": [simple_request("a"), simple_request("b")]},
        )
        assert made.status_code == 200
        assert set(made.json()) == set(plain.json()) == BATCH_KEYS
        batch_id = made.json()["id"]

        got = await http.get(f"/v1/messages/batches/{batch_id}?beta=true", headers=AUTH)
        assert got.status_code == 200 and set(got.json()) == BATCH_KEYS
        listed = await http.get("/v1/messages/batches?beta=true&limit=1", headers=AUTH)
        assert listed.status_code == 200
        assert set(listed.json()) == {"data", "has_more", "first_id", "last_id"}
        assert listed.json()["data"][0]["id"] == batch_id
        while (await http.get(f"/v1/messages/batches/{batch_id}?beta=true", headers=AUTH)).json()[
            "processing_status"
        ] != "ended":
            await asyncio.sleep(0.02)
        results = await http.get(f"/v1/messages/batches/{batch_id}/results?beta=true", headers=AUTH)
        assert results.status_code == 200
        assert sorted(json.loads(line)["custom_id"] for line in results.text.splitlines()) == ["a", "b"]
        canceled = await http.post(f"/v1/messages/batches/{batch_id}/cancel?beta=true", headers=AUTH)
        assert canceled.status_code == 400  # ended: the same answer as without the flag
        assert canceled.json()["error"]["type"] == "invalid_request_error"
        deleted = await http.delete(f"/v1/messages/batches/{batch_id}?beta=true", headers=AUTH)
        assert deleted.status_code == 200
        assert deleted.json() == {"id": batch_id, "type": "message_batch_deleted"}
        assert (await http.get(f"/v1/messages/batches/{batch_id}?beta=true", headers=AUTH)).status_code == 404


async def test_cancel_route_with_beta_flag(gated_factory: Callable[..., Any]) -> None:
    g: Gated = await gated_factory(concurrency=1)
    async with raw_client(g.server) as http:
        made = await http.post(
            "/v1/messages/batches?beta=true",
            headers=AUTH,
            json={"requests": [simple_request("a"), simple_request("b")]},
        )
        await wait_until(lambda: len(g.backend.calls) == 1, what="one running")
        resp = await http.post(f"/v1/messages/batches/{made.json()['id']}/cancel?beta=true", headers=AUTH)
        assert resp.status_code == 200
        assert resp.json()["processing_status"] == "canceling"
        assert set(resp.json()) == BATCH_KEYS


@pytest.mark.parametrize(
    "headers",
    [
        {"x-api-key": "sk-any"},
        {"authorization": "Bearer sk-any"},
        {"authorization": "bearer sk-any"},
        {"x-api-key": "", "authorization": "Bearer sk-any"},
    ],
    ids=["x-api-key", "bearer", "bearer-lowercase", "empty-x-api-key+bearer"],
)
async def test_both_auth_headers_work(server: MsgBatchServer, headers: dict[str, str]) -> None:
    async with raw_client(server) as http:
        made = await http.post("/v1/messages/batches", headers=headers, json={"requests": [simple_request("a")]})
        assert made.status_code == 200, made.text
        assert (await http.get(f"/v1/messages/batches/{made.json()['id']}", headers=headers)).status_code == 200
        assert (await http.get("/v1/messages/batches", headers=headers)).status_code == 200


async def test_keys_configured_accept_both_auth_headers(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path, workspaces={"ws": ["sk-real"]})) as srv, raw_client(srv) as http:
        for headers in ({"x-api-key": "sk-real"}, {"authorization": "Bearer sk-real"}):
            assert (await http.get("/v1/messages/batches", headers=headers)).status_code == 200
        client = async_client_for(srv, api_key="sk-real")  # the SDK sends Authorization: Bearer
        async with client:
            assert (await client.messages.batches.list()).data == []


@pytest.mark.parametrize("version", [None, "2023-06-01", "2026-10-21", "not-a-version"])
async def test_any_anthropic_version_is_accepted(server: MsgBatchServer, version: str | None) -> None:
    headers = dict(AUTH)
    if version is not None:
        headers["anthropic-version"] = version
    async with raw_client(server) as http:
        made = await http.post("/v1/messages/batches", headers=headers, json={"requests": [simple_request("a")]})
        assert made.status_code == 200, made.text
        assert (await http.get("/v1/messages/batches", headers=headers)).status_code == 200


async def test_request_id_on_every_response(server: MsgBatchServer) -> None:
    async with raw_client(server) as http:
        responses = []
        made = await http.post("/v1/messages/batches", headers=AUTH, json={"requests": [simple_request("a")]})
        responses.append(made)
        batch_id = made.json()["id"]
        responses.append(await http.get(f"/v1/messages/batches/{batch_id}", headers=AUTH))
        responses.append(await http.get("/v1/messages/batches", headers=AUTH))
        while (await http.get(f"/v1/messages/batches/{batch_id}", headers=AUTH)).json()["processing_status"] != "ended":
            await asyncio.sleep(0.02)
        responses.append(await http.get(f"/v1/messages/batches/{batch_id}/results", headers=AUTH))
        responses.append(await http.post(f"/v1/messages/batches/{batch_id}/cancel", headers=AUTH))  # 400
        responses.append(await http.delete(f"/v1/messages/batches/{batch_id}", headers=AUTH))
        responses.append(await http.get(f"/v1/messages/batches/{batch_id}", headers=AUTH))  # 404
        responses.append(await http.get("/v1/messages/batches"))  # 401
        responses.append(await http.get("/v1/nothing-here", headers=AUTH))  # 404
        responses.append(await http.post("/v1/messages/batches", headers=AUTH, content=b"{"))  # 400
    assert [r.status_code for r in responses] == [200, 200, 200, 200, 400, 200, 404, 401, 404, 400]
    ids = [r.headers.get("request-id") for r in responses]
    assert all(i is not None and REQUEST_ID.match(i) for i in ids), ids
    assert len(set(ids)) == len(ids)
    for resp in responses:
        if resp.status_code >= 400:
            assert resp.json()["request_id"] == resp.headers["request-id"]
