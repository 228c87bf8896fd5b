"""Many teams on one deployment, through the API: quotas (429 through the SDK, nothing stored),
priority and usage on the batch object, GET /v1/usage, the dashboard's endpoints (stats that add
up, pages of results, the workspace), list filters, and the metrics of tokens, of requests finished
in bulk, of the shared queue, and of a worker scraped over HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest
from test_metrics import parse_metrics, scrape, total

from conftest import async_client_for, make_settings, raw_client, running_server, simple_request, wait_ended
from msgbatch.config import load_settings
from msgbatch.engine.worker import Worker
from msgbatch.testing import free_port

KEYS = {"team-a": ["key-a"], "team-b": ["key-b"]}
PRICES = {"claude-*": {"input": 3.0, "output": 15.0, "cache_read": 0.3, "cache_creation": 3.75}}


def teams_settings(tmp_path: Path, **overrides: Any) -> Any:
    return make_settings(tmp_path, workspaces=KEYS, prices=PRICES, **overrides)


async def test_a_create_over_quota_is_refused_with_429_and_stores_nothing(tmp_path: Path) -> None:
    limits = {"default": {"max_queued_requests": 5}, "team-b": {"max_batches_in_progress": 1}}
    settings = teams_settings(tmp_path, limits=limits, simulate_latency=5.0)
    async with running_server(settings) as srv:
        a, b = async_client_for(srv, "key-a"), async_client_for(srv, "key-b")
        await a.messages.batches.create(requests=[simple_request(f"r{i}") for i in range(4)])
        with pytest.raises(anthropic.RateLimitError) as refused:
            await a.messages.batches.create(requests=[simple_request(f"s{i}") for i in range(2)])
        assert refused.value.status_code == 429
        assert refused.value.response.headers["x-should-retry"] == "false"
        assert refused.value.body["error"] == {  # type: ignore[index]
            "type": "rate_limit_error",
            "message": "max_queued_requests: workspace team-a may have at most 5 requests not yet finished; "
            "it has 4, and this batch adds 2.",
        }
        assert len((await a.messages.batches.list()).data) == 1
        await b.messages.batches.create(requests=[simple_request("one")])
        with pytest.raises(anthropic.RateLimitError, match="max_batches_in_progress: workspace team-b may have at"):
            await b.messages.batches.create(requests=[simple_request("two")])
        _, samples = await scrape(srv)
        assert total(samples, "msgbatch_batches_created_total") == 2
        await a.close()
        await b.close()


async def test_priority_usage_and_cost_of_a_batch(tmp_path: Path) -> None:
    async with running_server(teams_settings(tmp_path)) as srv:
        client = async_client_for(srv, "key-a")
        async with raw_client(srv, headers={"x-api-key": "key-a"}) as http:
            body = {"requests": [simple_request(f"r{i}", f"Count to {i}") for i in range(12)], "priority": "high"}
            created = (await http.post("/v1/messages/batches", content=json.dumps(body))).json()
            assert created["priority"] == "high"
            assert "usage" not in created  # none yet: the batch object shows it once there is some
            bad = await http.post("/v1/messages/batches", content=json.dumps({**body, "priority": 3}))
            assert bad.status_code == 400
            assert bad.json()["error"]["message"] == "priority: Input should be 'high', 'normal' or 'low'"
            batch = await wait_ended(client, created["id"])
            results = [
                json.loads(line)
                for line in (await http.get(f"/v1/messages/batches/{batch.id}/results")).text.splitlines()
            ]
            fetched = (await http.get(f"/v1/messages/batches/{batch.id}")).json()
            stats = (await http.get(f"/v1/messages/batches/{batch.id}/stats")).json()
            usage = (await http.get("/v1/usage", params={"group_by": "model"})).json()
            by_hour = (await http.get("/v1/usage", params={"group_by": "model,hour", "since": "2020-01-01"})).json()
            nothing = (
                await http.get("/v1/usage", params={"since": "2020-01-01", "until": "2020-01-02T00:00:00Z"})
            ).json()
            wrong = await http.get("/v1/usage", params={"group_by": "team"})
            late = await http.get("/v1/usage", params={"since": "tomorrow"})
        async with raw_client(srv, headers={"x-api-key": "key-b"}) as http:
            other = (await http.get("/v1/usage")).json()
        await client.close()
    summed = {"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
    for line in results:
        for kind in summed:
            summed[kind] += line["result"]["message"]["usage"][kind] or 0
    # The SDK's strict models accept the batch object with msgbatch's own keys.
    assert batch.request_counts.succeeded == 12
    assert fetched["usage"] == summed and summed["input_tokens"] > 0
    cost = (summed["input_tokens"] * 3.0 + summed["output_tokens"] * 15.0) / 1e6
    assert stats["usage"] == summed and stats["cost"] == pytest.approx(cost)
    assert stats["requests"] == [
        {"model": simple_request("x")["params"]["model"], "backend": "simulate", "processing": 0, "succeeded": 12,
         "errored": 0, "canceled": 0, "expired": 0}
    ]  # fmt: skip
    assert stats["errors"] == [] and sum(n for _, n in stats["throughput"]["points"]) == 12
    (row,) = usage["data"]
    assert usage["workspace"] == "team-a" and usage["group_by"] == ["model"]
    assert {k: row[k] for k in summed} == summed and row["succeeded"] == 12
    assert row["cost"] == pytest.approx(cost) and usage["total"]["cost"] == pytest.approx(cost)
    assert len(by_hour["data"]) == 1 and by_hour["data"][0]["start"].endswith(":00:00.000000Z")
    assert nothing["data"] == [] and nothing["total"]["succeeded"] == 0 and nothing["total"]["cost"] is None
    assert other["total"]["succeeded"] == 0  # team-b sees its own usage only
    assert wrong.status_code == 400 and "group_by: Input should be one of model, hour, day" in wrong.text
    assert late.status_code == 400 and late.json()["error"]["message"].startswith("since: expected an RFC 3339 time")


async def test_results_pages_list_filters_and_the_workspace(tmp_path: Path) -> None:
    limits = {"team-a": {"max_queued_requests": 1000, "weight": 3}}
    async with running_server(teams_settings(tmp_path, limits=limits)) as srv:
        client = async_client_for(srv, "key-a")
        requests = [
            simple_request(f"r{i:03d}", "Hi" + (" [[simulate error=api_error]]" if i % 10 == 0 else ""))
            for i in range(250)
        ]
        done = await client.messages.batches.create(requests=requests)
        await wait_ended(client, done.id)
        async with raw_client(srv, headers={"x-api-key": "key-a"}) as http:
            seen, after = [], 0
            while after is not None:
                page = (
                    await http.get(
                        f"/v1/messages/batches/{done.id}/results/page", params={"after": after, "limit": 100}
                    )
                ).json()
                seen += [line["custom_id"] for line in page["data"]]
                after = page["next"]
            errored = (
                await http.get(f"/v1/messages/batches/{done.id}/results/page", params={"type": "errored"})
            ).json()
            one = (await http.get(f"/v1/messages/batches/{done.id}/results/page", params={"custom_id": "r007"})).json()
            slow = await client.messages.batches.create(
                requests=[simple_request(f"s{i}", "Wait [[simulate latency=5]]") for i in range(3)]
            )
            ended = (await http.get("/v1/messages/batches", params={"status": "ended"})).json()
            running = (await http.get("/v1/messages/batches", params={"status": "in_progress"})).json()
            bad = await http.get("/v1/messages/batches", params={"status": "done"})
            workspace = (await http.get("/v1/workspace")).json()
            await client.messages.batches.cancel(slow.id)
    await client.close()
    assert seen == [f"r{i:03d}" for i in range(250)]
    assert len(errored["data"]) == 25 and errored["next"] is None
    assert [line["custom_id"] for line in one["data"]] == ["r007"]
    assert [b["id"] for b in ended["data"]] == [done.id] and [b["id"] for b in running["data"]] == [slow.id]
    assert bad.status_code == 400
    assert workspace["workspace"] == "team-a" and workspace["limits"]["weight"] == 3
    assert workspace["limits"]["max_queued_requests"] == 1000 and workspace["batches_in_progress"] == 1
    assert workspace["queued_requests"] == 3
    (work,) = workspace["work"]
    assert work["backend"] == "simulate" and work["running"] + work["waiting"] == 3
    assert workspace["usage_24h"]["total"]["succeeded"] == 225


async def test_metrics_count_tokens_bulk_cancels_and_the_shared_queue(tmp_path: Path) -> None:
    async with running_server(teams_settings(tmp_path, concurrency=2)) as srv:
        client = async_client_for(srv, "key-a")
        quick = await client.messages.batches.create(requests=[simple_request(f"q{i}") for i in range(5)])
        quick = await wait_ended(client, quick.id)
        slow = await client.messages.batches.create(
            requests=[simple_request(f"s{i}", "Wait [[simulate latency=0.3]]") for i in range(20)]
        )
        await asyncio.sleep(0.2)
        srv.metrics._shared_at = 0.0  # the shared gauges are read at most once a second
        _, during = await scrape(srv)
        slow = await client.messages.batches.cancel(slow.id)
        slow = await wait_ended(client, slow.id)
        _, samples = await scrape(srv)
        await client.close()
    model = simple_request("x")["params"]["model"]
    assert total(during, "msgbatch_batches", status="in_progress") == 1
    assert total(during, "msgbatch_batches", status="ended") == 1
    assert 0 < total(during, "msgbatch_requests_waiting", backend="simulate") <= 20
    # Tokens of every succeeded request: the quick batch's and those of the slow one that ran.
    for kind, key in (("input", "input_tokens"), ("output", "output_tokens")):
        used = sum(b.to_dict().get("usage", {}).get(key, 0) for b in (quick, slow))
        assert total(samples, "msgbatch_tokens_total", backend="simulate", model=model, kind=kind) == used > 0
    # The requests canceled while they waited never reached the dispatcher, and are counted.
    canceled = slow.request_counts.canceled
    assert canceled > 0
    assert total(samples, "msgbatch_requests_total", result="canceled", backend="none") == canceled
    assert total(samples, "msgbatch_requests_total") == 25


async def test_a_worker_serves_its_metrics_over_http(tmp_path: Path) -> None:
    """`msgbatch worker --metrics-port`: its dispatcher's metrics, scraped over real HTTP."""
    port = free_port()
    database = str(tmp_path / "shared.db")
    api_settings = make_settings(tmp_path, database=database, worker=False)
    worker = Worker(load_settings(None, env={}, database=database, metrics_port=port, poll_interval=0.05))
    async with running_server(api_settings) as srv:
        await worker.start()
        try:
            client = async_client_for(srv)
            batch = await client.messages.batches.create(requests=[simple_request(f"w{i}") for i in range(7)])
            worker.dispatcher.wake()
            batch = await wait_ended(client, batch.id)
            await client.close()
            async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                metrics = await http.get("/metrics")
                health = await http.get("/health")
                ready = await http.get("/ready")
                missing = await http.get("/nothing")
        finally:
            await worker.stop()
    assert batch.request_counts.succeeded == 7
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    types, samples = parse_metrics(metrics.text)
    assert types["msgbatch_requests"] == "counter"
    assert total(samples, "msgbatch_requests_total", result="succeeded", backend="simulate") == 7
    assert total(samples, "msgbatch_tokens_total", kind="input") == batch.to_dict()["usage"]["input_tokens"]
    assert health.json() == {"status": "ok"} and ready.json() == {"status": "ready"}
    assert missing.status_code == 404
    started = time.monotonic()
    with pytest.raises(httpx2.ConnectError):
        async with httpx2.AsyncClient() as http:
            await http.get(f"http://127.0.0.1:{port}/health")
    assert time.monotonic() - started < 30


async def test_list_filters_by_metadata_and_pages_both_ways(tmp_path: Path) -> None:
    async with running_server(teams_settings(tmp_path, worker=False)) as srv:
        body = json.dumps({"requests": [simple_request("r")]}).encode()
        made = [
            await srv.manager.create("team-a", body, "", metadata={"team": "nlp" if i % 2 else "vision", "n": str(i)})
            for i in range(6)
        ]
        async with raw_client(srv, headers={"x-api-key": "key-a"}) as http:
            nlp = (await http.get("/v1/messages/batches", params={"metadata[team]": "nlp"})).json()
            first = (await http.get("/v1/messages/batches", params={"metadata[team]": "nlp", "limit": 2})).json()
            older = (
                await http.get(
                    "/v1/messages/batches", params={"metadata[team]": "nlp", "limit": 2, "after_id": first["last_id"]}
                )
            ).json()
            newer = (
                await http.get(
                    "/v1/messages/batches",
                    params={"metadata[team]": "nlp", "status": "in_progress", "before_id": older["first_id"]},
                )
            ).json()
            bad = await http.get("/v1/messages/batches", params={"status": "done"})
            unset = (await http.get("/v1/messages/batches", params={"metadata[absent]": ""})).json()
    nlp_ids = [b.id for b in reversed(made) if json.loads(b.metadata)["team"] == "nlp"]
    assert [b["id"] for b in nlp["data"]] == nlp_ids
    assert [b["id"] for b in first["data"] + older["data"]] == nlp_ids[:3] and first["has_more"]
    assert [b["id"] for b in newer["data"]] == nlp_ids[:2] and not newer["has_more"]
    assert bad.status_code == 400 and "status" in bad.json()["error"]["message"]
    assert unset["data"] == []
