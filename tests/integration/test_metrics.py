"""/metrics, /health, /ready, the dashboard's stats endpoint, and the structured log lines."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import anthropic
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import TEST_KEY, async_client_for, make_settings, raw_client, running_server, simple_request, wait_ended
from msgbatch.api.app import MsgBatchServer
from msgbatch.backends.base import CallContext
from msgbatch.backends.mock import MockBackend
from msgbatch.backends.retry import RetryPolicy
from msgbatch.backends.router import Router
from msgbatch.backends.simulate import simulate
from msgbatch.errors import MsgbatchError, error_for_type

Samples = list[tuple[str, dict[str, str], float]]


def parse_metrics(text: str) -> tuple[dict[str, str], Samples]:
    """The exposition read by Prometheus's own parser: each family's type, and every sample."""
    types: dict[str, str] = {}
    samples: Samples = []
    for family in text_string_to_metric_families(text):
        assert family.name not in types, f"duplicate family {family.name}"
        types[family.name] = family.type
        samples += [(sample.name, sample.labels, sample.value) for sample in family.samples]
    return types, samples


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items()))


async def scrape(srv: MsgBatchServer) -> tuple[dict[str, str], Samples]:
    async with raw_client(srv) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse_metrics(response.text)


# -- counters add up -----------------------------------------------------------------------------


async def test_metrics_add_up_to_the_batch_counts(server: MsgBatchServer) -> None:
    requests = [simple_request(f"ok-{i}") for i in range(40)]
    requests += [simple_request(f"bad-{i}", "Fail [[simulate error=overloaded_error]]") for i in range(7)]
    requests += [simple_request(f"api-{i}", "Fail [[simulate error=api_error]]") for i in range(3)]
    requests += [{"custom_id": "invalid", "params": {"model": "m", "messages": []}}]  # no max_tokens
    body = json.dumps({"requests": requests}).encode()
    async with raw_client(server, headers={"x-api-key": TEST_KEY}) as http:
        created = (await http.post("/v1/messages/batches", content=body)).json()
        client = async_client_for(server)
        batch = await wait_ended(client, created["id"])
        await client.close()
        results = await http.get(f"/v1/messages/batches/{created['id']}/results")
    counts = batch.request_counts
    assert (counts.succeeded, counts.errored) == (40, 11)

    types, samples = await scrape(server)
    assert types["msgbatch_requests"] == "counter"
    assert types["msgbatch_backend_request_duration_seconds"] == "histogram"
    assert types["msgbatch_requests_in_flight"] == "gauge"
    assert total(samples, "msgbatch_requests_total", result="succeeded") == counts.succeeded
    assert total(samples, "msgbatch_requests_total", result="errored") == counts.errored
    assert total(samples, "msgbatch_requests_total") == len(requests)
    # The invalid request never reached a backend; the others all reached the simulator once.
    assert total(samples, "msgbatch_requests_total", result="errored", backend="none") == 1
    assert total(samples, "msgbatch_requests_total", backend="simulate") == 50
    assert total(samples, "msgbatch_backend_request_duration_seconds_count", backend="simulate") == 50
    inf = total(samples, "msgbatch_backend_request_duration_seconds_bucket", backend="simulate", le="+Inf")
    assert inf == 50
    assert total(samples, "msgbatch_backend_errors_total", error_type="overloaded_error") == 7
    assert total(samples, "msgbatch_backend_errors_total", error_type="api_error") == 3
    assert total(samples, "msgbatch_retries_total") == 0
    assert total(samples, "msgbatch_batches_created_total") == 1
    assert total(samples, "msgbatch_requests_accepted_total") == len(requests)
    assert total(samples, "msgbatch_batch_create_bytes_total") == len(body)
    assert total(samples, "msgbatch_results_bytes_total") == len(results.content)
    assert total(samples, "msgbatch_requests_in_flight") == 0
    assert total(samples, "msgbatch_dispatcher_queue_depth") == 0
    assert total(samples, "msgbatch_backend_concurrency_limit", backend="simulate") == server.settings.concurrency


def flaky_backend() -> MockBackend:
    """Fails every request once with a retryable overload, then answers like the simulator."""
    seen: set[str] = set()

    def answer(params: dict[str, Any], context: CallContext) -> dict[str, Any]:
        text = params["messages"][-1]["content"]
        if text not in seen:
            seen.add(text)
            raise error_for_type("overloaded_error", "try again", retryable=True, retry_after=0.0)
        return simulate(params)[0]

    return MockBackend(answer, name="flaky", retry=RetryPolicy(base=0.01))


async def test_retries_and_latency_are_counted_per_backend(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    async with running_server(settings, router=Router([], flaky_backend())) as srv:
        client = async_client_for(srv)
        batch = await client.messages.batches.create(requests=[simple_request(f"r{i}", f"n{i}") for i in range(5)])
        ended = await wait_ended(client, batch.id)
        await client.close()
        assert ended.request_counts.succeeded == 5
        _, samples = await scrape(srv)
    assert total(samples, "msgbatch_retries_total", backend="flaky", error_type="overloaded_error") == 5
    assert total(samples, "msgbatch_backend_request_duration_seconds_count", backend="flaky") == 10
    assert total(samples, "msgbatch_requests_total", result="succeeded", backend="flaky") == 5


async def test_health_ready_and_metrics_need_no_key(server: MsgBatchServer) -> None:
    async with raw_client(server) as http:
        assert (await http.get("/health")).json() == {"status": "ok"}
        assert (await http.get("/ready")).json() == {"status": "ready"}
        assert (await http.get("/metrics")).status_code == 200


async def test_ready_fails_when_the_database_is_unreachable(
    server: MsgBatchServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unreachable() -> None:
        raise OSError("disk I/O error")

    monkeypatch.setattr(server.store, "ping", unreachable)
    async with raw_client(server) as http:
        response = await http.get("/ready")
        health = await http.get("/health")
    assert response.status_code == 503
    assert response.json()["error"] == {"type": "api_error", "message": "database unreachable: disk I/O error"}
    assert health.status_code == 200  # alive, just not ready


# -- the dashboard's endpoints -------------------------------------------------------------------


async def test_stats_endpoint_reports_time_per_backend(
    server: MsgBatchServer, aclient: anthropic.AsyncAnthropic
) -> None:
    batch = await aclient.messages.batches.create(requests=[simple_request(f"s{i}") for i in range(6)])
    await wait_ended(aclient, batch.id)
    async with raw_client(server, headers={"x-api-key": TEST_KEY}) as http:
        stats = (await http.get(f"/v1/messages/batches/{batch.id}/stats")).json()
        missing = await http.get("/v1/messages/batches/msgbatch_000000000000000000000000/stats")
    async with raw_client(server) as http:
        anonymous = await http.get(f"/v1/messages/batches/{batch.id}/stats")
    assert stats["id"] == batch.id and stats["type"] == "message_batch_stats"
    (simulator,) = stats["backends"]
    assert simulator["backend"] == "simulate" and simulator["calls"] == 6 and simulator["errors"] == 0
    assert simulator["total_seconds"] >= simulator["max_seconds"] >= simulator["mean_seconds"] >= 0
    assert stats["since"].endswith("Z")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    assert anonymous.status_code == 401 and anonymous.json()["error"]["type"] == "authentication_error"


async def test_dashboard_is_served_without_data(server: MsgBatchServer) -> None:
    async with raw_client(server) as http:
        page = await http.get("/")
        script = await http.get("/dashboard/app.js")
        style = await http.get("/dashboard/style.css")
        other = await http.get("/dashboard/secret.txt")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert '<script src="/dashboard/app.js"' in page.text and "msgbatch_" not in page.text
    assert script.headers["content-type"].startswith("text/javascript") and "x-api-key" in script.text
    assert style.headers["content-type"].startswith("text/css")
    assert other.status_code == 404 and other.json()["error"]["type"] == "not_found_error"


# -- logs ----------------------------------------------------------------------------------------


async def test_one_log_line_per_transition_and_per_failed_request(
    server: MsgBatchServer, aclient: anthropic.AsyncAnthropic, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="msgbatch")
    secret_prompt = "TOP-SECRET-PROMPT [[simulate error=rate_limit_error]]"
    batch = await aclient.messages.batches.create(
        requests=[simple_request("fine"), simple_request("fails", secret_prompt)]
    )
    await wait_ended(aclient, batch.id)
    slow = await aclient.messages.batches.create(
        requests=[simple_request(f"slow{i}", "Wait [[simulate latency=0.5]]") for i in range(300)]
    )
    await aclient.messages.batches.cancel(slow.id)
    await aclient.messages.batches.delete(batch.id)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("msgbatch")]
    assert any(m.startswith(f"batch.created id={batch.id} workspace=default requests=2 bytes=") for m in messages)
    assert (
        f"request.errored batch={batch.id} custom_id=fails type=rate_limit_error backend=simulate attempts=1"
        in messages
    )
    assert f"batch.ended id={batch.id} reason=completed succeeded=1 errored=1 canceled=0 expired=0" in messages, (
        messages
    )
    assert any(m.startswith(f"batch.canceling id={slow.id} canceled=") for m in messages)
    assert f"batch.deleted id={batch.id}" in messages
    everything = caplog.text
    assert "TOP-SECRET" not in everything and TEST_KEY not in everything


async def test_concurrency_gauge_follows_the_adaptive_limit(tmp_path: Path) -> None:
    from msgbatch.backends.limiter import AdaptiveLimiter

    def overloaded(params: dict[str, Any], context: CallContext) -> dict[str, Any]:
        raise error_for_type("overloaded_error", "Overloaded", retryable=True, upstream_status=529)

    limiter = AdaptiveLimiter(MockBackend(overloaded, name="busy-upstream"), max_limit=8)
    async with running_server(make_settings(tmp_path), router=Router([], limiter)) as srv:
        _, samples = await scrape(srv)
        assert total(samples, "msgbatch_backend_concurrency_limit", backend="busy-upstream") == 8
        with pytest.raises(MsgbatchError):
            await limiter.create_message({}, CallContext())
        # An overload signal cuts the limit multiplicatively; the gauge shows the limit now in force.
        assert limiter.limit < 8
        _, samples = await scrape(srv)
        assert total(samples, "msgbatch_backend_concurrency_limit", backend="busy-upstream") == limiter.limit
