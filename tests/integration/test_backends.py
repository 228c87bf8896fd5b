"""The HTTP backends end to end: the official SDK -> msgbatch -> a fake upstream on loopback that
speaks real HTTP and breaks in every way the issue lists."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
from anthropic.types.messages import MessageBatchIndividualResponse
from msgspec.structs import replace

from conftest import async_client_for, make_settings, running_server, wait_ended, wait_until
from fake_upstream import FakeUpstream, Fault
from msgbatch.api.app import MsgBatchServer
from msgbatch.backends.config import build_router
from msgbatch.backends.limiter import AdaptiveLimiter
from msgbatch.config import RouteConfig, Settings

UPSTREAM_KEY = "sk-upstream-secret-0123456789"
MODEL = "llama-test"


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream(hang=3.0) as upstream:
        yield upstream


def settings_for(tmp_path: Path, kind: str, url: str, **backend: Any) -> Settings:
    table: dict[str, Any] = {
        "name": "up",
        "type": kind,
        "url": url if kind == "anthropic" else url + "/v1",
        "api_key_env": "UPSTREAM_KEY",
        "timeout": "400ms",
        "concurrency": 16,
        "max_attempts": 4,
        "backoff": "10ms",
        "backoff_cap": "40ms",
    }
    table.update(backend)
    return make_settings(tmp_path, backends=[table])


@pytest.fixture(params=["anthropic", "openai"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def msgbatch(tmp_path: Path, fake: FakeUpstream, kind: str) -> AsyncIterator[MsgBatchServer]:
    settings = settings_for(tmp_path, kind, fake.url)
    router = build_router(settings, env={"UPSTREAM_KEY": UPSTREAM_KEY})
    async with running_server(settings, router=router) as srv:
        yield srv


def request(custom_id: str, text: str | None = None, **params: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": text or custom_id}],
    }
    body.update(params)
    return {"custom_id": custom_id, "params": body}


async def run_batch(
    client: anthropic.AsyncAnthropic, requests: list[dict[str, Any]], timeout: float = 20.0, **kwargs: Any
) -> tuple[Any, dict[str, Any]]:
    batch = await client.messages.batches.create(requests=requests, **kwargs)  # type: ignore[arg-type]
    ended = await wait_ended(client, batch.id, timeout)
    results = [r async for r in await client.messages.batches.results(batch.id)]
    ids = [r.custom_id for r in results]
    assert len(ids) == len(set(ids)) == len(requests), "a request was lost or recorded twice"
    for line in results:  # every line parses strictly as the SDK's type
        MessageBatchIndividualResponse.model_validate(line.model_dump(mode="json", exclude_unset=True), strict=True)
    return ended, {r.custom_id: r.result for r in results}


# --- the happy path ---------------------------------------------------------------------------


async def test_anthropic_backend_forwards_params_headers_and_key(tmp_path: Path, fake: FakeUpstream) -> None:
    settings = settings_for(tmp_path, "anthropic", fake.url)
    router = build_router(settings, env={"UPSTREAM_KEY": UPSTREAM_KEY})
    async with running_server(settings, router=router) as srv:
        client = async_client_for(srv)
        extra = {"future_param": {"keep": [1, 2]}, "temperature": 0.5}
        ended, results = await run_batch(
            client.beta,  # type: ignore[arg-type]
            [request("a", **extra), request("b")],
            betas=["files-api-2025-04-14", "custom-beta"],
        )
        await client.close()
    assert ended.request_counts.succeeded == 2
    call = fake.calls_for("a")[0]
    assert call.path == "/v1/messages"
    assert call.body == request("a", **extra)["params"]  # as received, unknown keys included
    assert call.headers["x-api-key"] == UPSTREAM_KEY
    assert call.headers["anthropic-version"] == "2026-10-21"  # the batch's own: what the SDK sent
    assert call.headers["anthropic-beta"] == "files-api-2025-04-14,custom-beta"
    message = results["a"].message
    assert message.content[0].text == "echo: a"
    assert message.usage.service_tier == "batch"
    assert message.usage.cache_read_input_tokens == 0 and message.usage.cache_creation_input_tokens == 0
    assert message.stop_sequence is None


async def test_connections_are_pooled(msgbatch: MsgBatchServer, fake: FakeUpstream) -> None:
    client = async_client_for(msgbatch)
    await run_batch(client, [request(f"r{i}") for i in range(60)])
    await client.close()
    # 60 requests, at most 16 at once: far fewer connections than requests.
    backend = msgbatch.router.default
    assert isinstance(backend, AdaptiveLimiter)
    assert 1 <= backend.inner.inner._client.connections <= 16  # type: ignore[attr-defined]


async def test_openai_round_trip_text_system_tools_stop_images(tmp_path: Path, fake: FakeUpstream) -> None:
    seen: list[dict[str, Any]] = []

    def answer(body: dict[str, Any]) -> dict[str, Any]:
        seen.append(body)
        message: dict[str, Any] = {"role": "assistant", "content": "Paris is sunny"}
        finish, extra = "stop", {}
        if body.get("tools"):
            message["tool_calls"] = [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ]
            finish = "tool_calls"
        elif body.get("stop"):
            extra = {"stop_reason": body["stop"][0]}
        return {
            "id": "x",
            "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": finish, **extra}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3},
        }

    fake.answer["/v1/chat/completions"] = answer
    settings = settings_for(tmp_path, "openai", fake.url)
    weather = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
    png = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
    requests = [
        request("text", system=[{"type": "text", "text": "Be brief."}], temperature=0.2, top_p=0.5),
        request("tools", tools=[weather], tool_choice={"type": "tool", "name": "get_weather"}),
        request("stop", stop_sequences=["sunny"], metadata={"user_id": "u1"}),
        {
            "custom_id": "image",
            "params": {
                "model": MODEL,
                "max_tokens": 10,
                "messages": [
                    {"role": "user", "content": [{"type": "image", "source": png}, {"type": "text", "text": "What?"}]}
                ],
            },
        },
        request("doc", text=None, messages=[{"role": "user", "content": [{"type": "document", "source": {}}]}]),
    ]
    async with running_server(settings, router=build_router(settings, env={"UPSTREAM_KEY": UPSTREAM_KEY})) as srv:
        client = async_client_for(srv)
        _, results = await run_batch(client, requests)
        await client.close()
    by_key = {
        b["messages"][-1]["content"] if isinstance(b["messages"][-1]["content"], str) else "image": b for b in seen
    }
    assert by_key["text"]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert by_key["text"]["temperature"] == 0.2 and by_key["text"]["top_p"] == 0.5
    assert by_key["tools"]["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert by_key["stop"]["stop"] == ["sunny"] and by_key["stop"]["user"] == "u1"
    assert by_key["image"]["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert fake.calls[0].headers["authorization"] == f"Bearer {UPSTREAM_KEY}"

    assert results["text"].message.content[0].text == "Paris is sunny"
    assert results["text"].message.stop_reason == "end_turn"
    tool = results["tools"].message
    assert tool.stop_reason == "tool_use" and tool.content[1].input == {"city": "Paris"}
    assert tool.content[1].name == "get_weather" and tool.content[1].id == "call_1"
    assert (results["stop"].message.stop_reason, results["stop"].message.stop_sequence) == ("stop_sequence", "sunny")
    assert results["image"].type == "succeeded"
    assert results["doc"].type == "errored"
    assert results["doc"].error.error.type == "invalid_request_error"
    assert "document block cannot be sent" in results["doc"].error.error.message
    assert len(seen) == 4  # the untranslatable one never went upstream


# --- faults -----------------------------------------------------------------------------------

RETRYABLE: list[tuple[str, Fault]] = [
    ("s429", (429, {"retry-after": "0"})),
    ("s529", 529),
    ("s500", 500),
    ("s502", 502),
    ("s503", 503),
    ("s504", 504),
    ("timeout", "timeout"),
    ("reset", "reset"),
    ("malformed", "malformed"),
    ("html", "html"),
]
FINAL: list[tuple[str, int, str]] = [
    ("f400", 400, "invalid_request_error"),
    ("f401", 401, "authentication_error"),
    ("f403", 403, "permission_error"),
    ("f404", 404, "not_found_error"),
    ("f413", 413, "invalid_request_error"),
]


async def test_passing_faults_are_retried_and_final_ones_are_not(
    msgbatch: MsgBatchServer, fake: FakeUpstream, kind: str
) -> None:
    for key, fault in RETRYABLE:
        fake.plan(key, [fault, fault])  # fails twice, then succeeds
    for key, status, _ in FINAL:
        fake.plan(key, [status])
    fake.plan("mixed", [529, "reset", (429, {"retry-after-ms": "5"})])
    keys = [k for k, _ in RETRYABLE] + [k for k, _, _ in FINAL] + ["mixed", "clean"]
    client = async_client_for(msgbatch)
    ended, results = await run_batch(client, [request(k) for k in keys])
    await client.close()

    for key, _ in RETRYABLE:
        assert results[key].type == "succeeded", (key, results[key])
        assert len(fake.calls_for(key)) == 3, key
    assert results["mixed"].type == "succeeded" and len(fake.calls_for("mixed")) == 4
    assert results["clean"].type == "succeeded" and len(fake.calls_for("clean")) == 1
    for key, _status, error_type in FINAL:
        assert results[key].type == "errored", key
        assert results[key].error.error.type == error_type, key
        assert f"fake upstream says {_status}" in results[key].error.error.message
        assert len(fake.calls_for(key)) == 1, key
    assert ended.request_counts.succeeded == len(RETRYABLE) + 2
    assert ended.request_counts.errored == len(FINAL)


@pytest.mark.parametrize(
    ("fault", "error_type"),
    [
        (529, "overloaded_error"),
        (503, "api_error"),  # the fake says api_error in its body: the upstream's own type wins
        (500, "api_error"),
        ((429, {"retry-after": "0"}), "rate_limit_error"),
        ("timeout", "timeout_error"),
        ("reset", "api_error"),
        ("malformed", "api_error"),
    ],
)
async def test_retry_budget_runs_out(tmp_path: Path, fake: FakeUpstream, fault: Fault, error_type: str) -> None:
    fake.plan("doomed", [fault] * 10)
    settings = settings_for(tmp_path, "anthropic", fake.url, max_attempts=3)
    async with running_server(settings, router=build_router(settings, env={"UPSTREAM_KEY": UPSTREAM_KEY})) as srv:
        client = async_client_for(srv)
        _, results = await run_batch(client, [request("doomed")])
        await client.close()
    assert len(fake.calls_for("doomed")) == 3
    result = results["doomed"]
    assert result.type == "errored" and result.error.error.type == error_type
    assert UPSTREAM_KEY not in result.error.error.message


async def test_retry_after_is_honoured(msgbatch: MsgBatchServer, fake: FakeUpstream) -> None:
    fake.plan("slow", [(429, {"retry-after": "0.6"}), (529, {"retry-after-ms": "300"})])
    client = async_client_for(msgbatch)
    _, results = await run_batch(client, [request("slow")])
    await client.close()
    calls = fake.calls_for("slow")
    assert results["slow"].type == "succeeded" and len(calls) == 3
    assert calls[1].at - calls[0].at >= 0.6
    assert calls[2].at - calls[1].at >= 0.3


async def test_cancel_reaches_a_request_waiting_for_its_retry(msgbatch: MsgBatchServer, fake: FakeUpstream) -> None:
    fake.plan("waits", [(429, {"retry-after": "30"})])
    client = async_client_for(msgbatch)
    batch = await client.messages.batches.create(requests=[request("waits"), request("fine")])  # type: ignore[list-item]
    await wait_until(lambda: fake.calls_for("waits") and fake.calls_for("fine"), what="first attempts")
    await asyncio.sleep(0.1)  # the retry is stored, waiting
    await client.messages.batches.cancel(batch.id)
    ended = await wait_ended(client, batch.id, 5)
    results = {r.custom_id: r.result async for r in await client.messages.batches.results(batch.id)}
    await client.close()
    assert results["waits"].type == "canceled" and results["fine"].type == "succeeded"
    assert ended.request_counts.canceled == 1
    assert len(fake.calls_for("waits")) == 1


async def test_cancel_reaches_requests_queued_for_a_backend_slot(tmp_path: Path) -> None:
    with FakeUpstream(latency=0.3) as fake:
        settings = settings_for(tmp_path, "anthropic", fake.url, concurrency=1)
        async with running_server(settings, router=build_router(settings, env={"UPSTREAM_KEY": "k"})) as srv:
            client = async_client_for(srv)
            batch = await client.messages.batches.create(requests=[request(f"q{i}") for i in range(6)])  # type: ignore[misc]
            await wait_until(lambda: fake.in_flight == 1, what="the first request upstream")
            limiter = srv.router.default
            # One claimed ahead of the busy slot, waiting in the limiter; the other four wait in the store.
            assert isinstance(limiter, AdaptiveLimiter) and limiter.waiting == 1
            await client.messages.batches.cancel(batch.id)
            ended = await wait_ended(client, batch.id, 5)
            await client.close()
    assert ended.request_counts.succeeded == 1 and ended.request_counts.canceled == 5
    assert len(fake.calls) == 1  # none of the queued ones reached the upstream


async def test_expiry_reaches_a_request_waiting_for_its_retry(tmp_path: Path, fake: FakeUpstream) -> None:
    fake.plan("waits", [(429, {"retry-after": "5"})])
    settings = replace(settings_for(tmp_path, "anthropic", fake.url), expiry_seconds=1.0)
    async with running_server(settings, router=build_router(settings, env={"UPSTREAM_KEY": UPSTREAM_KEY})) as srv:
        client = async_client_for(srv)
        _, results = await run_batch(client, [request("waits"), request("fine")], timeout=10)
        await client.close()
    # retry-after would land past expires_at: the request is not retried, it expires.
    assert results["fine"].type == "succeeded"
    assert results["waits"].type == "expired"
    assert len(fake.calls_for("waits")) == 1


async def test_expiry_reaches_a_retry_already_scheduled(tmp_path: Path, fake: FakeUpstream) -> None:
    fake.plan("waits", [(429, {"retry-after": "0.4"})] * 20)
    settings = replace(settings_for(tmp_path, "anthropic", fake.url, max_attempts=50), expiry_seconds=1.5)
    async with running_server(settings, router=build_router(settings, env={"UPSTREAM_KEY": UPSTREAM_KEY})) as srv:
        client = async_client_for(srv)
        _, results = await run_batch(client, [request("waits")], timeout=10)
        await client.close()
    assert results["waits"].type == "expired"
    assert 2 <= len(fake.calls_for("waits")) <= 5


async def test_model_no_route_serves_is_not_found(tmp_path: Path, fake: FakeUpstream) -> None:
    settings = settings_for(tmp_path, "anthropic", fake.url)
    settings = replace(settings, routes=[RouteConfig(pattern="llama-*", backend="up")])
    async with running_server(settings, router=build_router(settings, env={"UPSTREAM_KEY": UPSTREAM_KEY})) as srv:
        client = async_client_for(srv)
        _, results = await run_batch(client, [request("served"), request("lost", model="gpt-9")])
        await client.close()
    assert results["served"].type == "succeeded"
    assert results["lost"].type == "errored"
    assert results["lost"].error.error.type == "not_found_error"
    assert results["lost"].error.error.message == "model: gpt-9"


# --- adaptive concurrency ---------------------------------------------------------------------


async def test_adaptive_limit_backs_off_an_overloaded_upstream_and_recovers(tmp_path: Path) -> None:
    with FakeUpstream(latency=0.02, capacity=4, overload_status=529) as fake:
        settings = settings_for(tmp_path, "anthropic", fake.url, concurrency=32, max_attempts=20)
        router = build_router(settings, env={"UPSTREAM_KEY": UPSTREAM_KEY})
        limiter = router.default
        assert isinstance(limiter, AdaptiveLimiter) and limiter.limit == 32
        seen: list[int] = []

        async def watch() -> None:
            while True:
                seen.append(limiter.limit)
                await asyncio.sleep(0.005)

        async with running_server(settings, router=router) as srv:
            client = async_client_for(srv)
            watcher = asyncio.create_task(watch())
            ended, _ = await run_batch(client, [request(f"r{i}") for i in range(300)], timeout=40)
            watcher.cancel()
            await client.close()
        assert ended.request_counts.succeeded == 300
        lowest = min(seen)
        # It settled near what the upstream can take instead of hammering it at 32.
        assert lowest <= 8
        per_key = Counter(c.key for c in fake.calls)
        assert sum(per_key.values()) - 300 == fake.overloaded  # every extra call was an overload answer
        assert fake.overloaded < 300  # far fewer rejections than requests


async def test_httpx_client_option_maps_the_same_faults(tmp_path: Path, fake: FakeUpstream) -> None:
    cases: dict[str, list[Fault]] = {
        "limited": [(429, {"retry-after": "0"})],
        "reset": ["reset"],
        "timeout": ["timeout"],
        "garbled": ["malformed"],
        "refused": [400],
    }
    for key, faults in cases.items():
        fake.plan(key, faults)
    settings = settings_for(tmp_path, "anthropic", fake.url, client="httpx")
    async with running_server(settings, router=build_router(settings, env={"UPSTREAM_KEY": UPSTREAM_KEY})) as srv:
        client = async_client_for(srv)
        _, results = await run_batch(client, [request(k) for k in cases])
        await client.close()
    for key in ("limited", "reset", "timeout", "garbled"):
        assert results[key].type == "succeeded" and len(fake.calls_for(key)) == 2, key
    assert results["refused"].type == "errored" and results["refused"].error.error.type == "invalid_request_error"
    assert fake.calls[0].headers["x-api-key"] == UPSTREAM_KEY


# --- the real command line --------------------------------------------------------------------


def test_serve_with_upstream_flag(serve_process: Any, fake: FakeUpstream, tmp_path: Path) -> None:
    proc = serve_process(
        "--upstream", f"openai={fake.url}/v1", "--concurrency", "8",
        env={"MSGBATCH_UPSTREAM_API_KEY": UPSTREAM_KEY},
    )  # fmt: skip
    fake.plan("flaky", [503])
    client = anthropic.Anthropic(api_key="k", base_url=proc.base_url, max_retries=0, _strict_response_validation=True)
    batch = client.messages.batches.create(requests=[request("flaky"), request("plain")])  # type: ignore[list-item]
    deadline = time.monotonic() + 30
    while batch.processing_status != "ended":
        assert time.monotonic() < deadline, batch
        time.sleep(0.1)
        batch = client.messages.batches.retrieve(batch.id)
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    client.close()
    assert results["plain"].type == "succeeded" and results["flaky"].type == "succeeded"
    assert results["plain"].message.content[0].text == "echo: plain"  # type: ignore[union-attr]
    assert len(fake.calls_for("flaky")) == 2
    assert fake.calls[0].path == "/v1/chat/completions"
    assert fake.calls[0].headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    proc.stop()
    assert UPSTREAM_KEY not in proc.log.read_text()
