"""Lifecycle: expiry, cancel with requests running, retention, fairness between batches, and the
documents' complete workflow with the sync client on a real port."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import anthropic
import pytest
from anthropic.types.messages import MessageBatchIndividualResponse

from conftest import (
    async_client_for,
    gated_simulator,
    make_settings,
    raw_client,
    running_server,
    simple_request,
    wait_ended,
)
from msgbatch.api.app import MsgBatchServer
from msgbatch.backends.router import Router

NO_RESULTS = "Message Batch ID has no available results."


async def result_lines(srv: Any, batch_id: str) -> list[MessageBatchIndividualResponse]:
    async with raw_client(srv) as http:
        resp = await http.get(f"/v1/messages/batches/{batch_id}/results", headers={"x-api-key": "k"})
    assert resp.status_code == 200, resp.text
    assert resp.content.endswith(b"\n") and b"\n\n" not in resp.content
    return [MessageBatchIndividualResponse.model_validate_json(line) for line in resp.content.splitlines()]


def assert_one_line_each(lines: list[MessageBatchIndividualResponse], custom_ids: list[str]) -> dict[str, str]:
    counted = Counter(r.custom_id for r in lines)
    assert counted == Counter(custom_ids), counted
    return {r.custom_id: r.result.type for r in lines}


async def test_expiry_turns_unfinished_requests_into_expired(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, expiry_seconds=1.0, concurrency=2)
    async with running_server(settings) as srv, async_client_for(srv) as client:
        fast = [simple_request(f"fast-{i}", f"quick {i}") for i in range(2)]
        slow = [simple_request(f"slow-{i}", f"slow {i} [[simulate latency=2]]") for i in range(4)]
        batch = await client.messages.batches.create(requests=fast + slow)
        assert batch.expires_at - batch.created_at == timedelta(seconds=1)

        ended = await wait_ended(client, batch.id, timeout=10)
        assert ended.ended_at is not None and ended.ended_at >= ended.expires_at
        counts = ended.request_counts
        assert (counts.succeeded, counts.expired, counts.processing) == (2, 4, 0)
        assert counts.errored == 0 and counts.canceled == 0
        assert ended.results_url is not None

        # The two slow requests that were running finish after the end: they change nothing.
        assert srv.dispatcher is not None
        await srv.dispatcher.drain(timeout=10)
        await asyncio.sleep(0.1)
        again = await client.messages.batches.retrieve(batch.id)
        assert again.request_counts == ended.request_counts and again.ended_at == ended.ended_at

        kinds = assert_one_line_each(await result_lines(srv, batch.id), [r["custom_id"] for r in fast + slow])
        assert kinds == {**{f"fast-{i}": "succeeded" for i in range(2)}, **{f"slow-{i}": "expired" for i in range(4)}}
        sdk_results = [r async for r in await client.messages.batches.results(batch.id)]
        assert sorted(r.custom_id for r in sdk_results) == sorted(kinds)


async def test_expiry_of_a_canceling_batch(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, expiry_seconds=1.0, concurrency=1)
    async with running_server(settings) as srv, async_client_for(srv) as client:
        reqs = [simple_request(f"r{i}", f"r{i} [[simulate latency=3]]") for i in range(3)]
        batch = await client.messages.batches.create(requests=reqs)
        await asyncio.sleep(0.2)  # r0 running
        canceling = await client.messages.batches.cancel(batch.id)
        assert canceling.processing_status == "canceling"
        ended = await wait_ended(client, batch.id, timeout=10)
        counts = ended.request_counts
        assert (counts.canceled, counts.expired, counts.processing, counts.succeeded) == (2, 1, 0, 0)
        kinds = assert_one_line_each(await result_lines(srv, batch.id), ["r0", "r1", "r2"])
        assert kinds == {"r0": "expired", "r1": "canceled", "r2": "canceled"}


async def test_cancel_lets_running_requests_finish(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, concurrency=3)
    async with running_server(settings) as srv, async_client_for(srv) as client:
        reqs = [simple_request(f"r{i}", f"request {i} [[simulate latency=1.5]]") for i in range(10)]
        batch = await client.messages.batches.create(requests=reqs)
        await asyncio.sleep(0.3)  # the first three are running (they take 1.5 s each)
        canceling = await client.messages.batches.cancel(batch.id)
        assert canceling.processing_status == "canceling"
        assert canceling.cancel_initiated_at is not None
        c = canceling.request_counts
        assert (c.processing, c.canceled, c.succeeded) == (3, 7, 0)

        ended = await wait_ended(client, batch.id, timeout=10)
        c = ended.request_counts
        assert (c.processing, c.canceled, c.succeeded, c.errored, c.expired) == (0, 7, 3, 0, 0)
        assert ended.ended_at is not None and ended.ended_at > ended.cancel_initiated_at
        kinds = assert_one_line_each(await result_lines(srv, batch.id), [f"r{i}" for i in range(10)])
        assert {k for k, v in kinds.items() if v == "succeeded"} == {"r0", "r1", "r2"}


async def test_retention_archives_results_but_keeps_the_batch(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, retention_seconds=1.0)
    async with running_server(settings) as srv, async_client_for(srv) as client:
        batch = await client.messages.batches.create(requests=[simple_request("a"), simple_request("b")])
        ended = await wait_ended(client, batch.id)
        assert ended.archived_at is None
        assert len(await result_lines(srv, batch.id)) == 2  # available until the retention runs out

        deadline = time.monotonic() + 10
        while (got := await client.messages.batches.retrieve(batch.id)).archived_at is None:
            assert time.monotonic() < deadline, "never archived"
            await asyncio.sleep(0.05)
        assert got.archived_at >= got.created_at + timedelta(seconds=1)
        assert got.processing_status == "ended"
        assert got.request_counts.succeeded == 2  # counts stay
        listed = [b async for b in client.messages.batches.list()]
        assert [b.id for b in listed] == [batch.id] and listed[0].archived_at is not None

        async with raw_client(srv) as http:
            resp = await http.get(f"/v1/messages/batches/{batch.id}/results", headers={"x-api-key": "k"})
        assert resp.status_code == 404
        assert resp.json()["error"] == {"type": "not_found_error", "message": NO_RESULTS}
        with pytest.raises(anthropic.AnthropicError):
            [r async for r in await client.messages.batches.results(batch.id)]
        # An archived batch can still be deleted.
        assert (await client.messages.batches.delete(batch.id)).type == "message_batch_deleted"


async def test_small_batch_is_not_starved_by_a_big_one(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, concurrency=2)
    async with running_server(settings) as srv, async_client_for(srv) as client:
        big = await client.messages.batches.create(requests=[simple_request(f"big-{i}") for i in range(20_000)])
        small = await client.messages.batches.create(requests=[simple_request(f"small-{i}") for i in range(5)])
        small_ended = await wait_ended(client, small.id, timeout=30)
        big_now = await client.messages.batches.retrieve(big.id)
        assert small_ended.request_counts.succeeded == 5
        # The big batch was created first and still has most of its work left.
        assert big_now.processing_status == "in_progress"
        assert big_now.request_counts.processing > 10_000, big_now.request_counts
        assert sum(big_now.request_counts.to_dict().values()) == 20_000
        await client.messages.batches.cancel(big.id)


async def test_restart_while_canceling_with_abandoned_requests(tmp_path: Path) -> None:
    """A graceful stop hands unfinished requests back; a canceling batch must still end after it."""
    gate = asyncio.Semaphore(0)  # the two running requests never finish on the first server
    settings = make_settings(tmp_path, concurrency=2)
    first = MsgBatchServer(settings, router=Router([], gated_simulator(gate)))
    await first.start()
    try:
        async with async_client_for(first) as client:
            batch = await client.messages.batches.create(requests=[simple_request(f"r{i}") for i in range(6)])
            deadline = time.monotonic() + 10
            while len(first.router.default.calls) < 2:  # type: ignore[union-attr]
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            canceling = await client.messages.batches.cancel(batch.id)
            assert canceling.processing_status == "canceling"
            assert (canceling.request_counts.processing, canceling.request_counts.canceled) == (2, 4)
        assert first.dispatcher is not None
        await first.dispatcher.stop(grace=0.1)  # the running two are abandoned and handed back
    finally:
        await first.stop()

    async with running_server(settings) as second, async_client_for(second) as client:
        ended = await wait_ended(client, batch.id, timeout=5)
        counts = ended.request_counts
        assert counts.processing == 0 and counts.canceled >= 4
        assert counts.canceled + counts.succeeded == 6
        assert_one_line_each(await result_lines(second, batch.id), [f"r{i}" for i in range(6)])


def test_complete_batch_workflow_sync(sync_client: anthropic.Anthropic, capsys: pytest.CaptureFixture[str]) -> None:
    """batches-sdk.md, "Complete Batch Workflow", with only the sleep shortened."""
    client = sync_client

    # Step 1: Create a batch
    print("Creating batch...")
    batch = client.messages.batches.create(
        requests=[
            {
                "custom_id": f"req-{i}",
                "params": {
                    "model": "claude-3-5-sonnet-20241022",
                    "max_tokens": 1024,
                    "messages": [{"role": "user", "content": f"What is {i} + {i}?"}],
                },
            }
            for i in range(10)
        ]
    )

    print(f"Batch created: {batch.id}")

    # Step 2: Poll for completion
    print("Waiting for batch to complete...")
    while batch.processing_status == "in_progress":
        time.sleep(0.01)
        batch = client.messages.batches.retrieve(batch.id)
        print(f"  Processing: {batch.request_counts.processing} remaining")

    # Step 3: Process results
    print("Processing results...")
    if batch.processing_status == "ended" and batch.results_url:
        results = client.messages.batches.results(batch.id)

        for result in results:
            if result.result.type == "succeeded":
                message = result.result.message
                content = message.content[0].text
                print(f"{result.custom_id}: {content}")
            else:
                print(f"{result.custom_id}: {result.result.type}")

    # Step 4: Clean up
    print("Deleting batch...")
    client.messages.batches.delete(batch.id)
    print("Done!")

    out = capsys.readouterr().out
    assert batch.processing_status == "ended" and batch.request_counts.succeeded == 10
    for i in range(10):
        assert f'req-{i}: Regarding "What is {i} + {i}?":' in out
    assert out.rstrip().endswith("Done!")
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(batch.id)
