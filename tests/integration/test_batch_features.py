"""The features beyond the hosted API, through the official SDK (strict response validation on):
partial results, retry of failed lines, fail-fast, idempotent create, metadata. Each is invisible
to a client that does not use it. Hard cancel: test_hard_cancel.py; webhooks: test_webhooks.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import pytest
from anthropic._decoders.jsonl import AsyncJSONLDecoder
from anthropic.types.messages import MessageBatch, MessageBatchIndividualResponse
from test_metrics import parse_metrics, total

from conftest import (
    TEST_KEY,
    ThreadedServer,
    async_client_for,
    make_settings,
    raw_client,
    running_server,
    simple_request,
    wait_ended,
)
from msgbatch.api.app import MsgBatchServer
from msgbatch.backends.base import CallContext
from msgbatch.backends.mock import MockBackend
from msgbatch.backends.router import Router
from msgbatch.backends.simulate import simulate
from msgbatch.errors import NotFoundError
from msgbatch.store.base import Step
from msgbatch.store.sqlite import SQLiteStore

# The keys of the hosted API's batch object: what a batch that uses no feature shows, exactly.
HOSTED_KEYS = {
    "id", "type", "processing_status", "request_counts", "created_at", "expires_at", "ended_at",
    "cancel_initiated_at", "archived_at", "results_url",
}  # fmt: skip


def failing(custom_id: str, error: str = "invalid_request_error", latency: float = 0) -> dict[str, Any]:
    directive = f"[[simulate error={error}" + (f" latency={latency}" if latency else "") + "]]"
    return simple_request(custom_id, f"fail {directive}")


async def partial_results(client: anthropic.AsyncAnthropic, batch_id: str) -> list[MessageBatchIndividualResponse]:
    """`?partial=true` through the SDK's generic `get` (the SDK's results() wants a results_url)."""
    decoder = await client.get(
        f"/v1/messages/batches/{batch_id}/results",
        cast_to=AsyncJSONLDecoder[MessageBatchIndividualResponse],
        options={"params": {"partial": "true"}},
        stream=True,
    )
    return [line async for line in decoder]


async def final_results(client: anthropic.AsyncAnthropic, batch_id: str) -> list[MessageBatchIndividualResponse]:
    return [line async for line in await client.messages.batches.results(batch_id)]


# -- invisible unless used --------------------------------------------------------------------


async def test_a_batch_that_uses_no_feature_has_exactly_the_hosted_keys(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path)) as srv, raw_client(srv) as http:
        headers = {"x-api-key": TEST_KEY}
        created = await http.post("/v1/messages/batches", json={"requests": [simple_request("a")]}, headers=headers)
        assert set(created.json()) == HOSTED_KEYS
        batch_id = created.json()["id"]
        async with async_client_for(srv) as client:
            ended = await wait_ended(client, batch_id)
            # The one key of msgbatch's own it gains: its tokens, once it has some ("Many teams").
            assert set(ended.model_extra or {}) == {"usage"}
        for path in (f"/v1/messages/batches/{batch_id}", "/v1/messages/batches"):
            answer = (await http.get(path, headers=headers)).json()
            for batch in answer.get("data", [answer]):
                assert set(batch) == HOSTED_KEYS | {"usage"}
        assert (await http.get(f"/v1/messages/batches/{batch_id}/results", headers=headers)).status_code == 200


# -- metadata ---------------------------------------------------------------------------------


async def test_metadata_is_kept_shown_and_filters_the_list(aclient: anthropic.AsyncAnthropic) -> None:
    search = await aclient.messages.batches.create(
        requests=[simple_request("a")], extra_body={"metadata": {"team": "search", "run": "7"}}
    )
    assert search.model_extra == {"metadata": {"team": "search", "run": "7"}}
    ads = await aclient.messages.batches.create(
        requests=[simple_request("a")], extra_body={"metadata": {"team": "ads"}}
    )
    plain = await aclient.messages.batches.create(requests=[simple_request("a")])
    fetched = await aclient.messages.batches.retrieve(search.id)
    assert getattr(fetched, "metadata", None) == {"team": "search", "run": "7"}

    async def ids(**query: str) -> list[str]:
        page = await aclient.messages.batches.list(extra_query=query)
        return [b.id for b in page.data]

    assert await ids(**{"metadata[team]": "search"}) == [search.id]
    assert await ids(**{"metadata[team]": "search", "metadata[run]": "7"}) == [search.id]
    assert await ids(**{"metadata[team]": "search", "metadata[run]": "8"}) == []
    assert await ids(**{"metadata[team]": "ads"}) == [ads.id]
    assert await ids() == [plain.id, ads.id, search.id]


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        (
            {f"k{i}": "v" for i in range(17)},
            "metadata: Dictionary should have at most 16 items after validation, not 17",
        ),
        ({"k" * 65: "v"}, "metadata: keys should have at least 1 and at most 64 characters, not 65"),
        ({"k": "v" * 513}, "metadata.k: String should have at most 512 characters"),
        ({"k": 1}, "metadata.k: Input should be a valid string"),
        (["k"], "metadata: Input should be a valid dictionary"),
    ],
)
async def test_bad_metadata_is_refused(aclient: anthropic.AsyncAnthropic, metadata: Any, message: str) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        await aclient.messages.batches.create(requests=[simple_request("a")], extra_body={"metadata": metadata})
    assert refused.value.body["error"] == {"type": "invalid_request_error", "message": message}  # type: ignore[index]


async def test_a_bad_list_filter_is_refused(aclient: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.BadRequestError, match=r"metadata\[KEY\]=VALUE"):
        await aclient.messages.batches.list(extra_query={"metadata": "team"})


# -- partial results --------------------------------------------------------------------------


async def test_partial_results_while_running_are_a_subset_of_the_final_ones(
    aclient: anthropic.AsyncAnthropic,
) -> None:
    requests = [simple_request(f"fast-{i}", f"question {i}") for i in range(20)]
    requests += [simple_request(f"slow-{i}", f"question {i} [[simulate latency=1.5]]") for i in range(5)]
    batch = await aclient.messages.batches.create(requests=requests)
    # Without the flag, a running batch has no results, as on the hosted API.
    with pytest.raises(anthropic.NotFoundError):
        await aclient.get(f"/v1/messages/batches/{batch.id}/results", cast_to=object)
    seen: list[MessageBatchIndividualResponse] = []
    deadline = time.monotonic() + 10
    while len(seen) < 20:
        assert time.monotonic() < deadline
        seen = await partial_results(aclient, batch.id)
        still = await aclient.messages.batches.retrieve(batch.id)
        await asyncio.sleep(0.05)
    assert still.processing_status == "in_progress"
    assert len(seen) < 25
    ended = await wait_ended(aclient, batch.id)
    final = await final_results(aclient, batch.id)
    assert len(final) == ended.request_counts.succeeded == 25
    # Each line seen early is the final line for its custom_id; none twice.
    by_id = {r.custom_id: r for r in final}
    assert len({r.custom_id for r in seen}) == len(seen)
    assert all(by_id[r.custom_id] == r for r in seen)
    # On an ended batch, partial=true changes nothing.
    assert await partial_results(aclient, batch.id) == final


# -- retry of failed lines --------------------------------------------------------------------


async def test_retry_of_errored_lines_makes_a_linked_batch_of_exactly_those(
    aclient: anthropic.AsyncAnthropic,
) -> None:
    requests = [simple_request(f"ok-{i}") for i in range(6)]
    requests += [failing("bad-0"), failing("bad-1", "not_found_error"), failing("bad-2", "permission_error")]
    parent = await aclient.messages.batches.create(requests=requests, extra_body={"metadata": {"team": "search"}})
    with pytest.raises(anthropic.BadRequestError, match="has not ended yet"):
        await aclient.post(f"/v1/messages/batches/{parent.id}/retry", cast_to=MessageBatch, body={})
    await wait_ended(aclient, parent.id)
    child = await aclient.post(f"/v1/messages/batches/{parent.id}/retry", cast_to=MessageBatch, body={})
    assert child.processing_status == "in_progress"
    assert child.model_extra == {"metadata": {"team": "search"}, "retry_of": parent.id}
    assert getattr(await aclient.messages.batches.retrieve(parent.id), "retried_by", None) == child.id
    await wait_ended(aclient, child.id)
    lines = await final_results(aclient, child.id)
    assert sorted(r.custom_id for r in lines) == ["bad-0", "bad-1", "bad-2"]
    # Only some error types; the retry of a retry; nothing to retry.
    only = await aclient.post(
        f"/v1/messages/batches/{parent.id}/retry",
        cast_to=MessageBatch,
        body={"result_types": ["errored"], "error_types": ["not_found_error"]},
    )
    await wait_ended(aclient, only.id)
    assert [r.custom_id for r in await final_results(aclient, only.id)] == ["bad-1"]
    with pytest.raises(anthropic.BadRequestError, match="nothing to retry"):
        await aclient.post(
            f"/v1/messages/batches/{parent.id}/retry", cast_to=MessageBatch, body={"result_types": ["expired"]}
        )
    with pytest.raises(anthropic.BadRequestError, match="Extra inputs are not permitted"):
        await aclient.post(f"/v1/messages/batches/{parent.id}/retry", cast_to=MessageBatch, body={"types": ["x"]})
    with pytest.raises(anthropic.NotFoundError):
        await aclient.post("/v1/messages/batches/msgbatch_nope/retry", cast_to=MessageBatch, body={})


async def test_retry_runs_with_the_parents_betas_and_version(tmp_path: Path) -> None:
    calls: list[tuple[str, tuple[str, ...], str | None]] = []

    def answer(params: dict[str, Any], context: CallContext) -> dict[str, Any]:
        text = params["messages"][0]["content"]
        calls.append((text, context.betas, context.anthropic_version))
        if text == "fail" and len(calls) <= 2:
            raise NotFoundError("model gone")
        return simulate(params)[0]

    router = Router([], MockBackend(answer))
    async with (
        running_server(make_settings(tmp_path), router=router) as srv,
        async_client_for(srv, default_headers={"anthropic-version": "2023-06-01"}) as client,
    ):
        parent = await client.beta.messages.batches.create(
            requests=[simple_request("ok"), simple_request("again", "fail")], betas=["b-1", "b-2"]
        )
        await wait_ended(client, parent.id)
        child = await client.post(f"/v1/messages/batches/{parent.id}/retry", cast_to=MessageBatch, body={})
        ended = await wait_ended(client, child.id)
    assert ended.request_counts.succeeded == 1
    first, retried = [call for call in calls if call[0] == "fail"]
    assert first == retried == ("fail", ("b-1", "b-2"), "2023-06-01")


# -- fail fast --------------------------------------------------------------------------------


async def test_fail_fast_cancels_a_batch_whose_requests_all_error(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path, concurrency=4)) as srv, async_client_for(srv) as client:
        batch = await client.messages.batches.create(
            requests=[failing(f"r{i}", latency=0.02) for i in range(300)],
            extra_body={"fail_fast": {"min_results": 10, "max_error_rate": 0.5}},
        )
        assert batch.model_extra == {"fail_fast": {"min_results": 10, "max_error_rate": 0.5}}
        ended = await wait_ended(client, batch.id)
    counts = ended.request_counts
    assert ended.model_extra["cancel_reason"] == "fail_fast"
    assert ended.cancel_initiated_at is not None
    assert counts.errored >= 10 and counts.canceled > 0 and counts.errored + counts.canceled == 300
    assert counts.errored < 100  # it stopped early; the rest never ran


async def test_fail_fast_does_not_fire_below_the_rate(aclient: anthropic.AsyncAnthropic) -> None:
    requests = [simple_request(f"ok-{i}") for i in range(30)] + [failing(f"bad-{i}") for i in range(5)]
    batch = await aclient.messages.batches.create(
        requests=requests, extra_body={"fail_fast": {"min_results": 5, "max_error_rate": 0.5}}
    )
    ended = await wait_ended(aclient, batch.id)
    assert (ended.request_counts.succeeded, ended.request_counts.errored) == (30, 5)
    assert "cancel_reason" not in ended.model_extra and ended.cancel_initiated_at is None


_AT_LEAST_1 = "Input should be greater than or equal to 1"
_0_TO_1 = "Input should be greater than or equal to 0 and less than or equal to 1"


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"min_results": 0, "max_error_rate": 0.5}, f"fail_fast.min_results: {_AT_LEAST_1}"),
        ({"min_results": 5}, "fail_fast.max_error_rate: Field required"),
        ({"min_results": 5, "max_error_rate": 1.5}, f"fail_fast.max_error_rate: {_0_TO_1}"),
        ({"min_results": 5, "max_error_rate": 0.5, "x": 1}, "fail_fast.x: Extra inputs are not permitted"),
        ("yes", "fail_fast: Input should be a valid dictionary"),
    ],
)
async def test_bad_fail_fast_is_refused(aclient: anthropic.AsyncAnthropic, policy: Any, message: str) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        await aclient.messages.batches.create(requests=[simple_request("a")], extra_body={"fail_fast": policy})
    assert refused.value.body["error"]["message"] == message  # type: ignore[index]


# -- idempotent create ------------------------------------------------------------------------


class SlowAnswerStore(SQLiteStore):
    """Commits a batch at once, then takes `delay` seconds more to answer, once: the create is
    stored, but the client's timeout fires first (a slow link, a proxy)."""

    def __init__(self, path: str, delay: float) -> None:
        super().__init__(path)
        self.delay = delay
        self.slowed = 0

    async def run(self, *steps: Step, durable: bool = False) -> list[list[Any]]:
        found = await super().run(*steps, durable=durable)
        if durable and any(s.name == "insert_batch" for s in steps) and not self.slowed:
            self.slowed += 1
            await asyncio.sleep(self.delay)
        return found


@pytest.fixture
def slow_server(tmp_path: Path) -> Iterator[tuple[ThreadedServer, SlowAnswerStore]]:
    store = SlowAnswerStore(str(tmp_path / "slow.db"), delay=2.5)
    settings = make_settings(tmp_path)
    with ThreadedServer(settings, MsgBatchServer(settings, store=store)) as live:
        yield live, store


@pytest.mark.parametrize("with_key", [True, False])
def test_idempotent_create_retried_after_a_server_side_timeout_makes_one_batch(
    slow_server: tuple[ThreadedServer, SlowAnswerStore], with_key: bool
) -> None:
    live, store = slow_server
    client = anthropic.Anthropic(
        api_key=TEST_KEY, base_url=live.base_url, _strict_response_validation=True, max_retries=2, timeout=1.0
    )
    headers = {"Idempotency-Key": "create-7f3a"} if with_key else {}
    with client:
        batch = client.messages.batches.create(requests=[simple_request("a")], extra_headers=headers)
        listed = client.messages.batches.list().data
    assert store.slowed == 1  # the first attempt's answer came too late: the SDK sent it again
    if with_key:
        assert [b.id for b in listed] == [batch.id]
        _, samples = parse_metrics(httpx.get(f"{live.base_url}/metrics").text)
        assert total(samples, "msgbatch_idempotent_replays_total") == 1
    else:  # what the key is for: without it, the retry is a second batch
        assert len(listed) == 2


async def test_idempotent_create_async_sdk_after_a_timeout(slow_server: tuple[ThreadedServer, SlowAnswerStore]) -> None:
    live, store = slow_server
    async with anthropic.AsyncAnthropic(
        api_key=TEST_KEY, base_url=live.base_url, _strict_response_validation=True, max_retries=2, timeout=1.0
    ) as client:
        batch = await client.messages.batches.create(
            requests=[simple_request("a")], extra_headers={"Idempotency-Key": "async-1"}
        )
        assert [b.id async for b in client.messages.batches.list()] == [batch.id]
    assert store.slowed == 1


async def test_same_key_other_body_is_a_conflict(aclient: anthropic.AsyncAnthropic) -> None:
    key = {"Idempotency-Key": "k-42"}
    first = await aclient.messages.batches.create(requests=[simple_request("a")], extra_headers=key)
    again = await aclient.messages.batches.with_raw_response.create(requests=[simple_request("a")], extra_headers=key)
    assert again.headers["idempotent-replayed"] == "true" and (await again.parse()).id == first.id
    with pytest.raises(anthropic.ConflictError) as conflict:
        await aclient.messages.batches.create(requests=[simple_request("b")], extra_headers=key)
    error = conflict.value.body["error"]  # type: ignore[index]
    assert error["type"] == "invalid_request_error"
    assert "already used for a different request" in error["message"] and first.id in error["message"]
    with pytest.raises(anthropic.BadRequestError, match="Idempotency-Key: must be 1 to 255 printable ASCII"):
        await aclient.messages.batches.create(
            requests=[simple_request("a")], extra_headers={"Idempotency-Key": "k" * 256}
        )


async def test_identical_creates_at_once_make_one_batch(aclient: anthropic.AsyncAnthropic) -> None:
    requests = [simple_request(f"r{i}") for i in range(500)]
    made = await asyncio.gather(
        *(
            aclient.messages.batches.create(requests=requests, extra_headers={"Idempotency-Key": "burst"})
            for _ in range(8)
        )
    )
    assert len({b.id for b in made}) == 1
    assert len((await aclient.messages.batches.list()).data) == 1


def test_features_through_the_sync_sdk(sync_client: anthropic.Anthropic) -> None:
    """The sync SDK against a real port: metadata, fail-fast, partial results, retry, a key."""
    batch = sync_client.messages.batches.create(
        requests=[simple_request("ok"), failing("bad")],
        extra_body={"metadata": {"team": "eval"}, "fail_fast": {"min_results": 50, "max_error_rate": 0.9}},
        extra_headers={"Idempotency-Key": "sync-1"},
    )
    again = sync_client.messages.batches.create(
        requests=[simple_request("ok"), failing("bad")],
        extra_body={"metadata": {"team": "eval"}, "fail_fast": {"min_results": 50, "max_error_rate": 0.9}},
        extra_headers={"Idempotency-Key": "sync-1"},
    )
    assert again.id == batch.id
    while sync_client.messages.batches.retrieve(batch.id).processing_status != "ended":
        time.sleep(0.02)
    partial = sync_client.get(
        f"/v1/messages/batches/{batch.id}/results", cast_to=httpx2.Response, options={"params": {"partial": "true"}}
    )
    assert len(partial.content.splitlines()) == 2
    child = sync_client.post(f"/v1/messages/batches/{batch.id}/retry", cast_to=MessageBatch, body={})
    assert child.model_extra["retry_of"] == batch.id and child.model_extra["metadata"] == {"team": "eval"}
    page = sync_client.messages.batches.list(extra_query={"metadata[team]": "eval"})
    assert [b.id for b in page.data] == [child.id, batch.id]
